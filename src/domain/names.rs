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
    /// A tier change was asked for; and the tenant's tier switched (its endpoint served by the new home).
    TierChangeRequested,
    TierSwitched,
}

impl HistoryKind {
    pub const ALL: [HistoryKind; 19] = [
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
        HistoryKind::TierChangeRequested,
        HistoryKind::TierSwitched,
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
            HistoryKind::TierChangeRequested => "tier.requested",
            HistoryKind::TierSwitched => "tier.switched",
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

/// Where one event's delivery to one endpoint stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    /// Due, or waiting for its next attempt.
    Pending,
    Delivered,
    /// Out of attempts.
    Failed,
    /// Its endpoint is disabled (removed from configuration, or answered 410).
    Disabled,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 4] = [
        DeliveryState::Pending,
        DeliveryState::Delivered,
        DeliveryState::Failed,
        DeliveryState::Disabled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
            DeliveryState::Disabled => "disabled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

/// Where a fleet rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutState {
    Running,
    /// Paused by an operator: no new wave starts; updates in flight finish.
    Paused,
    /// Stopped by failures past the threshold; a resume retries the failed tenants.
    Halted,
    Completed,
    Aborted,
}

impl RolloutState {
    pub const ALL: [RolloutState; 5] = [
        RolloutState::Running,
        RolloutState::Paused,
        RolloutState::Halted,
        RolloutState::Completed,
        RolloutState::Aborted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::Halted => "halted",
            RolloutState::Completed => "completed",
            RolloutState::Aborted => "aborted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// Where one tenant of a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutTenantState {
    Pending,
    /// Its update run is in flight.
    Running,
    Updated,
    Failed,
    /// No longer active when its wave came (or offboarded during its update).
    Skipped,
}

impl RolloutTenantState {
    pub const ALL: [RolloutTenantState; 5] = [
        RolloutTenantState::Pending,
        RolloutTenantState::Running,
        RolloutTenantState::Updated,
        RolloutTenantState::Failed,
        RolloutTenantState::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RolloutTenantState::Pending => "pending",
            RolloutTenantState::Running => "running",
            RolloutTenantState::Updated => "updated",
            RolloutTenantState::Failed => "failed",
            RolloutTenantState::Skipped => "skipped",
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
        for d in DeliveryState::ALL {
            assert_eq!(DeliveryState::parse(d.as_str()), Some(d));
        }
        for r in RolloutState::ALL {
            assert_eq!(RolloutState::parse(r.as_str()), Some(r));
        }
        for t in RolloutTenantState::ALL {
            assert_eq!(RolloutTenantState::parse(t.as_str()), Some(t));
        }
        assert_eq!(HistoryKind::parse("step.exploded"), None);
    }
}
