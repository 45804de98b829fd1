//! The names vend writes into its tables and shows in its API: history entry kinds and run states.
//! One enum each, one string per variant; SQL gets them as parameters, never as literals.

/// What a history entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryKind {
    SignupAccepted,
    StepSucceeded,
    StepWaiting,
    StepQueued,
    StepBackoff,
    StepThrottled,
    StepFailed,
    /// An attempt whose worker lost its lease, ended by whoever took the step over or rewound it.
    StepAbandoned,
    /// Shown by the API before the entry that ended an attempt; never stored.
    StepStarted,
    TenantState,
    OperatorRetry,
    OperatorRequeue,
    /// An operator sent an event to an endpoint again.
    OperatorRedeliver,
    RunCancelled,
    TenantOffboarding,
    TenantRestored,
    RolloutStarted,
}

impl HistoryKind {
    pub const ALL: [HistoryKind; 17] = [
        HistoryKind::SignupAccepted,
        HistoryKind::StepSucceeded,
        HistoryKind::StepWaiting,
        HistoryKind::StepQueued,
        HistoryKind::StepBackoff,
        HistoryKind::StepThrottled,
        HistoryKind::StepFailed,
        HistoryKind::StepAbandoned,
        HistoryKind::StepStarted,
        HistoryKind::TenantState,
        HistoryKind::OperatorRetry,
        HistoryKind::OperatorRequeue,
        HistoryKind::OperatorRedeliver,
        HistoryKind::RunCancelled,
        HistoryKind::TenantOffboarding,
        HistoryKind::TenantRestored,
        HistoryKind::RolloutStarted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HistoryKind::SignupAccepted => "signup.accepted",
            HistoryKind::StepSucceeded => "step.succeeded",
            HistoryKind::StepWaiting => "step.waiting",
            HistoryKind::StepQueued => "step.queued",
            HistoryKind::StepBackoff => "step.backoff",
            HistoryKind::StepThrottled => "step.throttled",
            HistoryKind::StepFailed => "step.failed",
            HistoryKind::StepAbandoned => "step.abandoned",
            HistoryKind::StepStarted => "step.started",
            HistoryKind::TenantState => "tenant.state",
            HistoryKind::OperatorRetry => "operator.retry",
            HistoryKind::OperatorRequeue => "operator.requeue",
            HistoryKind::OperatorRedeliver => "operator.redeliver",
            HistoryKind::RunCancelled => "run.cancelled",
            HistoryKind::TenantOffboarding => "tenant.offboarding",
            HistoryKind::TenantRestored => "tenant.restored",
            HistoryKind::RolloutStarted => "rollout.started",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Running,
    Succeeded,
    Failed,
    /// Stopped by an offboard (a provisioning run) or a restore (an offboard run); never current.
    Cancelled,
}

impl RunState {
    pub const ALL: [RunState; 4] = [
        RunState::Running,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_parses_back_and_is_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for k in HistoryKind::ALL {
            assert_eq!(HistoryKind::parse(k.as_str()), Some(k));
            assert!(seen.insert(k.as_str()), "{} twice", k.as_str());
        }
        for r in RunState::ALL {
            assert_eq!(RunState::parse(r.as_str()), Some(r));
        }
        assert_eq!(HistoryKind::parse("step.exploded"), None);
    }
}
