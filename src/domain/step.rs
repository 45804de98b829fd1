//! Steps: their states, what a step attempt can answer, and the pure rule that turns an answer into the
//! step's next state. The engine stores whatever [`decide`] returns; nothing here does I/O.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::retry::RetryPolicy;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepState {
    Pending,
    Running,
    Waiting,
    Succeeded,
    Failed,
}

impl StepState {
    pub const ALL: [StepState; 5] = [
        StepState::Pending,
        StepState::Running,
        StepState::Waiting,
        StepState::Succeeded,
        StepState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Waiting => "waiting",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        StepState::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Why a `waiting` step waits. Only a backoff after a failure starts a new attempt when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WaitReason {
    /// A durable timer the step asked for (polling an asynchronous AWS operation).
    Poll,
    /// Backing off after a transient failure.
    Backoff,
    /// Backing off after throttling; does not consume the attempt budget.
    Throttle,
    /// Queued for a capacity slot (e.g. CreateAccount requests in flight); woken when one frees.
    Slot,
}

impl WaitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitReason::Poll => "poll",
            WaitReason::Backoff => "backoff",
            WaitReason::Throttle => "throttle",
            WaitReason::Slot => "slot",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            WaitReason::Poll,
            WaitReason::Backoff,
            WaitReason::Throttle,
            WaitReason::Slot,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }
}

/// How an error should be handled; AWS adapters classify, the engine obeys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorClass {
    /// AWS (or another dependency) asked us to slow down: back off, keep the attempt budget.
    Throttled,
    /// May succeed if tried again: back off and retry within the attempt budget.
    Transient,
    /// Will not succeed by retrying: the step fails until an operator retries or requeues it.
    Permanent,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Throttled => "throttled",
            ErrorClass::Transient => "transient",
            ErrorClass::Permanent => "permanent",
        }
    }
}

/// A classified error from a step attempt. `code` is stable and machine-readable (an AWS error code, a
/// `FailureReason`, or a vend code); `message` is for humans and never carries secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    pub class: ErrorClass,
    pub code: String,
    pub message: String,
    /// A delay the error itself asks for (e.g. `Retry-After`); backoff never goes below it.
    pub retry_after: Option<Duration>,
    /// The AWS request id of the answer, when AWS gave one: what a support case asks for.
    pub request_id: Option<String>,
}

impl StepError {
    pub fn new(class: ErrorClass, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            class,
            code: code.into(),
            message: message.into(),
            retry_after: None,
            request_id: None,
        }
    }

    pub fn transient(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Transient, code, message)
    }

    pub fn permanent(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Permanent, code, message)
    }

    pub fn throttled(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(ErrorClass::Throttled, code, message)
    }

    pub fn with_retry_after(mut self, d: Duration) -> Self {
        self.retry_after = Some(d);
        self
    }

    /// `code: message`, the form stored as a step's `last_error`.
    pub fn display(&self) -> String {
        format!("{}: {}", self.code, self.message)
    }
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.code,
            self.class.as_str(),
            self.message
        )
    }
}

impl std::error::Error for StepError {}

/// What one step attempt answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepOutcome {
    /// The step's work is done.
    Succeeded,
    /// Not done yet; run the step again after `after` (a durable timer: no worker waits).
    Wait { after: Duration, note: String },
    /// Waiting for a capacity slot: run again when one frees (or after `after` at the latest).
    Queued { after: Duration, note: String },
    /// The attempt failed.
    Failed(StepError),
}

/// The step's counters as stored, seen when its attempt ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StepProgress {
    /// Attempts started so far, including the one that just ended.
    pub attempts: u32,
    /// Throttled answers so far, before the one that just ended.
    pub throttles: u32,
    /// How long since the step was first started (for the step's overall timeout).
    pub elapsed: Duration,
}

/// Why a step failed for good; kept apart from the error so the history can say which limit was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// The error was permanent or listed as non-retryable by the policy.
    NonRetryable,
    /// The attempt budget is spent.
    AttemptsExhausted,
    /// The step's overall timeout passed.
    TimedOut,
}

/// The next state of a step after an attempt, as the engine will store it.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Succeed,
    Wait {
        after: Duration,
        reason: WaitReason,
        /// The error that caused a backoff, kept as the step's `last_error`.
        error: Option<StepError>,
        note: String,
    },
    Fail {
        error: StepError,
        reason: FailReason,
    },
}

/// The step's overall limit and retry policy, as declared in `workflows/`.
#[derive(Debug, Clone, PartialEq)]
pub struct StepRules {
    pub retry: RetryPolicy,
    /// Give up when the step has been going for this long (polls and backoffs included).
    pub timeout: Option<Duration>,
}

/// Turns an attempt's outcome into the step's next state. `jitter` is a uniform sample from [0, 1) so the
/// caller owns randomness and tests can pin it.
pub fn decide(
    rules: &StepRules,
    progress: StepProgress,
    outcome: StepOutcome,
    jitter: f64,
) -> Decision {
    let timed_out = rules.timeout.is_some_and(|t| progress.elapsed >= t);
    match outcome {
        StepOutcome::Succeeded => Decision::Succeed,
        StepOutcome::Wait { note, .. } | StepOutcome::Queued { note, .. } if timed_out => {
            Decision::Fail {
                error: timeout_error(rules, &note),
                reason: FailReason::TimedOut,
            }
        }
        StepOutcome::Wait { after, note } => Decision::Wait {
            after,
            reason: WaitReason::Poll,
            error: None,
            note,
        },
        StepOutcome::Queued { after, note } => Decision::Wait {
            after,
            reason: WaitReason::Slot,
            error: None,
            note,
        },
        StepOutcome::Failed(error) => {
            let retryable = match error.class {
                ErrorClass::Permanent => false,
                ErrorClass::Throttled | ErrorClass::Transient => {
                    !rules.retry.non_retryable_errors.contains(&error.code)
                }
            };
            if !retryable {
                return Decision::Fail {
                    error,
                    reason: FailReason::NonRetryable,
                };
            }
            if timed_out {
                let mut e = timeout_error(rules, "");
                e.message = format!("{}; last error: {}", e.message, error.display());
                return Decision::Fail {
                    error: e,
                    reason: FailReason::TimedOut,
                };
            }
            match error.class {
                ErrorClass::Throttled => {
                    // Throttling is AWS pacing us, not the step failing: it backs off on its own
                    // exponent and never spends an attempt.
                    let after = until_timeout(
                        rules,
                        progress,
                        rules
                            .retry
                            .delay(progress.throttles + 1, error.retry_after, jitter),
                    );
                    Decision::Wait {
                        after,
                        reason: WaitReason::Throttle,
                        note: format!("throttled, retrying in {}", human(after)),
                        error: Some(error),
                    }
                }
                _ if progress.attempts >= rules.retry.maximum_attempts => {
                    let attempts = progress.attempts;
                    let mut e = error;
                    e.message = format!("{} (gave up after {attempts} attempts)", e.message);
                    Decision::Fail {
                        error: e,
                        reason: FailReason::AttemptsExhausted,
                    }
                }
                _ => {
                    let after = until_timeout(
                        rules,
                        progress,
                        rules
                            .retry
                            .delay(progress.attempts, error.retry_after, jitter),
                    );
                    Decision::Wait {
                        after,
                        reason: WaitReason::Backoff,
                        note: format!(
                            "attempt {} failed, retrying in {}",
                            progress.attempts,
                            human(after)
                        ),
                        error: Some(error),
                    }
                }
            }
        }
    }
}

/// A backoff never reaches past the step's timeout: the step runs once more when the timeout is
/// due, and fails there if it still cannot go on (a throttle must not outlast the timeout).
fn until_timeout(rules: &StepRules, progress: StepProgress, after: Duration) -> Duration {
    match rules.timeout {
        Some(t) => after.min(
            t.saturating_sub(progress.elapsed)
                .max(Duration::from_secs(1)),
        ),
        None => after,
    }
}

fn timeout_error(rules: &StepRules, note: &str) -> StepError {
    let limit = rules.timeout.map(human).unwrap_or_default();
    let mut msg = format!("step did not finish within its timeout of {limit}");
    if !note.is_empty() {
        msg.push_str(&format!(" (last status: {note})"));
    }
    StepError::permanent("StepTimedOut", msg)
}

/// A duration as people write it (`1m 30s`), rounded to milliseconds.
pub fn human(d: Duration) -> String {
    let ms = Duration::from_millis(d.as_millis() as u64);
    humantime::format_duration(ms).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::retry::Jitter;

    fn rules() -> StepRules {
        StepRules {
            retry: RetryPolicy {
                initial_interval: Duration::from_secs(1),
                backoff_coefficient: 2.0,
                maximum_interval: Duration::from_secs(60),
                maximum_attempts: 3,
                jitter: Jitter::None,
                non_retryable_errors: vec!["InvalidInput".into()],
            },
            timeout: Some(Duration::from_secs(3600)),
        }
    }

    fn progress(attempts: u32) -> StepProgress {
        StepProgress {
            attempts,
            throttles: 0,
            elapsed: Duration::from_secs(1),
        }
    }

    #[test]
    fn success_advances() {
        assert_eq!(
            decide(&rules(), progress(1), StepOutcome::Succeeded, 0.5),
            Decision::Succeed
        );
    }

    #[test]
    fn wait_becomes_a_durable_poll() {
        let d = decide(
            &rules(),
            progress(1),
            StepOutcome::Wait {
                after: Duration::from_secs(15),
                note: "IN_PROGRESS".into(),
            },
            0.5,
        );
        assert!(matches!(
            d,
            Decision::Wait { after, reason: WaitReason::Poll, error: None, .. } if after == Duration::from_secs(15)
        ));
    }

    #[test]
    fn transient_failures_back_off_exponentially_then_give_up() {
        let e = StepError::transient("ServiceException", "boom");
        let d1 = decide(&rules(), progress(1), StepOutcome::Failed(e.clone()), 0.0);
        let d2 = decide(&rules(), progress(2), StepOutcome::Failed(e.clone()), 0.0);
        match (d1, d2) {
            (
                Decision::Wait {
                    after: a1,
                    reason: WaitReason::Backoff,
                    ..
                },
                Decision::Wait { after: a2, .. },
            ) => {
                assert_eq!(a1, Duration::from_secs(1));
                assert_eq!(a2, Duration::from_secs(2));
            }
            other => panic!("unexpected {other:?}"),
        }
        let d3 = decide(&rules(), progress(3), StepOutcome::Failed(e), 0.0);
        match d3 {
            Decision::Fail {
                reason: FailReason::AttemptsExhausted,
                error,
            } => assert!(error.message.contains("gave up after 3 attempts")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn permanent_and_non_retryable_errors_fail_at_once() {
        let d = decide(
            &rules(),
            progress(1),
            StepOutcome::Failed(StepError::permanent("EMAIL_INVALID", "bad")),
            0.0,
        );
        assert!(matches!(
            d,
            Decision::Fail {
                reason: FailReason::NonRetryable,
                ..
            }
        ));
        let d = decide(
            &rules(),
            progress(1),
            StepOutcome::Failed(StepError::transient("InvalidInput", "listed")),
            0.0,
        );
        assert!(matches!(
            d,
            Decision::Fail {
                reason: FailReason::NonRetryable,
                ..
            }
        ));
    }

    #[test]
    fn throttling_never_spends_the_attempt_budget() {
        // Attempts are already at the maximum: a transient error would give up, a throttle must not.
        let p = StepProgress {
            attempts: 3,
            throttles: 7,
            elapsed: Duration::from_secs(1),
        };
        let d = decide(
            &rules(),
            p,
            StepOutcome::Failed(StepError::throttled("Throttling", "Rate exceeded")),
            0.0,
        );
        match d {
            Decision::Wait {
                reason: WaitReason::Throttle,
                after,
                ..
            } => assert_eq!(
                after,
                Duration::from_secs(60),
                "capped at the maximum interval"
            ),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn retry_after_is_a_floor_for_backoff() {
        let e = StepError::throttled("TooManyRequestsException", "slow down")
            .with_retry_after(Duration::from_secs(30));
        let d = decide(&rules(), progress(1), StepOutcome::Failed(e), 0.0);
        assert!(matches!(d, Decision::Wait { after, .. } if after == Duration::from_secs(30)));
    }

    #[test]
    fn a_throttle_or_a_backoff_never_waits_past_the_timeout() {
        let r = rules();
        let limit = r.timeout.unwrap();
        let p = StepProgress {
            attempts: 1,
            throttles: 0,
            elapsed: limit - Duration::from_secs(10),
        };
        let e = StepError::throttled("Throttling", "slow down")
            .with_retry_after(Duration::from_secs(3600));
        let d = decide(&r, p, StepOutcome::Failed(e), 0.5);
        assert!(
            matches!(d, Decision::Wait { after, .. } if after == Duration::from_secs(10)),
            "{d:?}"
        );
        let e = StepError::transient("ServiceException", "later")
            .with_retry_after(Duration::from_secs(600));
        let d = decide(&r, p, StepOutcome::Failed(e), 0.5);
        assert!(
            matches!(d, Decision::Wait { after, .. } if after == Duration::from_secs(10)),
            "{d:?}"
        );
    }

    #[test]
    fn timeout_fails_a_step_that_keeps_waiting() {
        let p = StepProgress {
            attempts: 1,
            throttles: 0,
            elapsed: Duration::from_secs(3600),
        };
        let d = decide(
            &rules(),
            p,
            StepOutcome::Wait {
                after: Duration::from_secs(15),
                note: "IN_PROGRESS".into(),
            },
            0.0,
        );
        match d {
            Decision::Fail {
                reason: FailReason::TimedOut,
                error,
            } => {
                assert_eq!(error.code, "StepTimedOut");
                assert!(error.message.contains("1h"), "{}", error.message);
                assert!(error.message.contains("IN_PROGRESS"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
