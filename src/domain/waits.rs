//! When to look again at an asynchronous AWS operation (an account being created, a stack, a
//! certificate, a closure) without anyone tuning a poll interval. How long the operation takes in this
//! organization is learned from the durations vend has seen (kept in Postgres, shared by replicas and
//! restarts); the first look is just before the expected completion, then short looks around it, then
//! a slowing tail for the rare straggler. With nothing learned yet, looks grow by half each time.

use std::time::Duration;

/// The shortest wait between two looks: below it the engine's own latency dominates.
pub const MIN_LOOK: Duration = Duration::from_millis(100);

/// How long until the next look at an operation that started `elapsed` ago, has not finished yet,
/// and usually takes `expected` (`None`: nothing learned yet). `cap` is the longest wait between looks
/// (the workflow's poll interval).
pub fn next_look(elapsed: Duration, expected: Option<Duration>, cap: Duration) -> Duration {
    let cap = cap.max(MIN_LOOK);
    let wait = match expected {
        // Unknown: half a second, then half the time waited so far (each look 1.5x the last), so an
        // operation of length D is seen done within 1.5D with log1.5(2D) looks.
        None => (elapsed / 2).max(Duration::from_millis(500)),
        Some(e) => {
            // Just before the expected end: an early finish is caught, a typical one a look later.
            let first = e.mul_f64(0.97);
            if elapsed < first {
                first - elapsed
            } else {
                // Around the expected end, an eightieth of it apart; past it, half of the overshoot, so
                // a straggler is seen within half its lateness with few looks.
                (e / 80).max(elapsed.saturating_sub(e) / 2)
            }
        }
    };
    wait.clamp(MIN_LOOK, cap)
}

/// The typical duration from what was seen: the median of the recent observations, or `None` with
/// fewer than `min_samples` of them (a single odd one must not steer every tenant).
pub fn expected(mut seen: Vec<f64>, min_samples: usize) -> Option<Duration> {
    seen.retain(|s| s.is_finite() && *s >= 0.0);
    if seen.len() < min_samples.max(1) {
        return None;
    }
    seen.sort_by(f64::total_cmp);
    let mid = seen.len() / 2;
    let median = if seen.len().is_multiple_of(2) {
        (seen[mid - 1] + seen[mid]) / 2.0
    } else {
        seen[mid]
    };
    Some(Duration::from_secs_f64(median))
}

/// What one observation says an operation took: it had not finished at `last_unfinished` (since its
/// start) and had at `first_finished`, so the midpoint of what is known (off by at most half a look).
/// Seen done at the very first look, it took anywhere up to that look: a quarter less is recorded. An
/// expectation that is too long thus comes down by a quarter per turnover of the median until first
/// looks see the operation unfinished again; from then on observations bracket the real duration, so
/// it settles between three quarters of it and a look past it and cannot collapse. (Half, the middle
/// of what is known, comes down faster but swings: the median sits between two clusters.)
pub fn observed(last_unfinished: Option<Duration>, first_finished: Duration) -> Duration {
    match last_unfinished {
        Some(lo) => {
            let lo = lo.min(first_finished);
            lo + (first_finished - lo) / 2
        }
        None => first_finished.mul_f64(0.75),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Duration = Duration::from_secs(10);

    /// Looks taken until an operation of length `d` is seen done, and how late the last one is.
    fn simulate(d: Duration, expected: Option<Duration>, cap: Duration) -> (u32, Duration) {
        let mut t = Duration::ZERO;
        let mut looks = 0;
        loop {
            t += next_look(t, expected, cap);
            looks += 1;
            if t >= d {
                return (looks, t - d);
            }
        }
    }

    #[test]
    fn with_a_learned_expectation_an_operation_is_seen_done_soon_in_few_looks() {
        for secs in [4.0, 30.0, 180.0] {
            let d = Duration::from_secs_f64(secs);
            let cap = Duration::from_secs(3600);
            let (looks, late) = simulate(d, Some(d), cap);
            assert!(looks <= 4, "{secs}s: {looks} looks");
            assert!(
                late <= d / 40 + Duration::from_millis(1),
                "{secs}s: {late:?} late"
            );
            // Reality a little faster or slower than learned: still seen soon, with few looks.
            for f in [0.85, 1.05, 1.3, 2.0] {
                let actual = d.mul_f64(f);
                let (looks, late) = simulate(actual, Some(d), cap);
                assert!(looks <= 16, "{secs}s x{f}: {looks} looks");
                // An early finish waits for the first look, at 0.97 of the expectation.
                let bound = (d / 40)
                    .max(actual.saturating_sub(d) / 2)
                    .max(d.mul_f64(0.97).saturating_sub(actual))
                    + Duration::from_millis(1);
                assert!(late <= bound, "{secs}s x{f}: {late:?} late");
            }
        }
    }

    #[test]
    fn with_nothing_learned_looks_grow_by_half() {
        let (looks, late) = simulate(Duration::from_secs(30), None, Duration::from_secs(3600));
        assert!(looks <= 12, "{looks}");
        assert!(late <= Duration::from_secs(15), "{late:?}");
        let (looks, late) = simulate(Duration::from_secs(4), None, Duration::from_secs(3600));
        assert!(looks <= 7, "{looks}");
        assert!(late <= Duration::from_secs(2), "{late:?}");
        // The cap bounds the spacing.
        assert_eq!(next_look(Duration::from_secs(600), None, CAP), CAP);
    }

    #[test]
    fn every_wait_stays_within_bounds() {
        let e = Duration::from_secs(4);
        assert_eq!(next_look(Duration::from_secs(80), Some(e), CAP), CAP);
        assert_eq!(
            next_look(Duration::from_secs(9), Some(e), CAP),
            Duration::from_millis(2500)
        );
        assert_eq!(
            next_look(Duration::ZERO, Some(Duration::from_millis(10)), CAP),
            MIN_LOOK
        );
    }

    #[test]
    fn the_expectation_is_a_median_of_enough_samples() {
        assert_eq!(expected(vec![], 3), None);
        assert_eq!(expected(vec![4.0, 5.0], 3), None);
        assert_eq!(
            expected(vec![4.0, 100.0, 5.0], 3),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            expected(vec![4.0, 6.0, 5.0, 7.0, f64::NAN], 3),
            Some(Duration::from_secs_f64(5.5))
        );
    }

    #[test]
    fn an_observation_is_the_middle_of_what_was_seen_or_its_upper_bound() {
        assert_eq!(
            observed(Some(Duration::from_secs(38)), Duration::from_secs(40)),
            Duration::from_secs(39)
        );
        // Seen done at the first look: anywhere up to it.
        assert_eq!(
            observed(None, Duration::from_secs(4)),
            Duration::from_secs(3)
        );
    }

    #[test]
    fn an_expectation_too_long_comes_down_to_the_real_duration_and_stays() {
        // Learned 8 s; the operation now takes 1 s. Each operation is looked at as vend would, and
        // what it saw is recorded.
        let real = Duration::from_secs(1);
        let mut seen: Vec<f64> = vec![8.0; 25];
        for _ in 0..200 {
            let e = expected(seen.clone(), 3);
            let (mut t, mut last_unfinished) = (Duration::ZERO, None);
            loop {
                t += next_look(t, e, Duration::from_secs(3600));
                if t >= real {
                    break;
                }
                last_unfinished = Some(t);
            }
            seen.remove(0);
            seen.push(observed(last_unfinished, t).as_secs_f64());
        }
        let e = expected(seen, 3).unwrap().as_secs_f64();
        assert!((0.75..=1.1).contains(&e), "settled at {e} s");
    }
}
