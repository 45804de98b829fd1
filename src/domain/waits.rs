//! When to look again at an asynchronous AWS operation (an account being created, a stack, a
//! certificate, a closure) without anyone tuning a poll interval. How long the operation takes in this
//! organization is learned from the durations vend has seen (kept in Postgres, shared by replicas and
//! restarts); the first look is just before the expected completion, then short looks around it, then
//! a slowing tail for the rare straggler. With nothing learned yet, looks double in spacing.

use std::time::Duration;

/// The shortest wait between two looks: below it the engine's own latency dominates.
pub const MIN_LOOK: Duration = Duration::from_millis(200);

/// How long until the next look at an operation that started `elapsed` ago, has not finished yet,
/// and usually takes `expected` (`None`: nothing learned yet). `cap` is the longest wait between looks
/// (the workflow's poll interval).
pub fn next_look(elapsed: Duration, expected: Option<Duration>, cap: Duration) -> Duration {
    let cap = cap.max(MIN_LOOK);
    let wait = match expected {
        // Unknown: 1 s, then double the time waited so far, so an operation of length D is seen done
        // within 2D with log2(D) looks.
        None => elapsed.max(Duration::from_secs(1)),
        Some(e) => {
            // Just before the expected end: an early finish is caught, a typical one is one look later.
            let first = e.mul_f64(0.9);
            if elapsed < first {
                first - elapsed
            } else if elapsed < e.mul_f64(2.0) {
                // Around the expected end: look often, a twentieth of the expectation apart.
                e / 20
            } else {
                // A straggler: slow down with its age, as with nothing learned.
                elapsed / 4
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
/// start) and had at `first_finished`; the midpoint is the best guess and is off by at most half a
/// look.
pub fn observed(last_unfinished: Option<Duration>, first_finished: Duration) -> Duration {
    let lo = last_unfinished
        .unwrap_or(Duration::ZERO)
        .min(first_finished);
    lo + (first_finished - lo) / 2
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
    fn with_a_learned_expectation_an_operation_is_seen_done_within_a_twentieth_in_few_looks() {
        for secs in [4.0, 30.0, 180.0] {
            let d = Duration::from_secs_f64(secs);
            let cap = Duration::from_secs(3600);
            let (looks, late) = simulate(d, Some(d), cap);
            assert!(looks <= 4, "{secs}s: {looks} looks");
            assert!(
                late <= d / 20 + Duration::from_millis(1),
                "{secs}s: {late:?} late"
            );
            // Reality a little slower or faster than learned.
            for f in [0.85, 1.1, 1.3] {
                let (looks, late) = simulate(d.mul_f64(f), Some(d), cap);
                assert!(looks <= 10, "{secs}s x{f}: {looks} looks");
                assert!(
                    late <= d / 20 + Duration::from_millis(1),
                    "{secs}s x{f}: {late:?} late"
                );
            }
        }
    }

    #[test]
    fn with_nothing_learned_looks_double_in_spacing() {
        let (looks, late) = simulate(Duration::from_secs(30), None, Duration::from_secs(3600));
        assert_eq!(looks, 6); // 1, 2, 4, 8, 16, 32
        assert_eq!(late, Duration::from_secs(2));
        // The cap bounds the spacing.
        let (looks, _) = simulate(Duration::from_secs(60), None, CAP);
        assert!(looks >= 8, "{looks}");
    }

    #[test]
    fn stragglers_slow_down_and_every_wait_stays_within_bounds() {
        let e = Duration::from_secs(4);
        assert_eq!(next_look(Duration::from_secs(80), Some(e), CAP), CAP);
        assert_eq!(
            next_look(Duration::from_secs(9), Some(e), CAP),
            Duration::from_millis(2250)
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
    fn an_observation_is_the_middle_of_what_was_seen() {
        assert_eq!(
            observed(Some(Duration::from_secs(38)), Duration::from_secs(40)),
            Duration::from_secs(39)
        );
        assert_eq!(
            observed(None, Duration::from_secs(4)),
            Duration::from_secs(2)
        );
    }
}
