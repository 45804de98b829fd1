//! Progress events: what receivers of webhooks and EventBridge see. Types are part of the contract.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum EventType {
    #[serde(rename = "tenant.created")]
    TenantCreated,
    #[serde(rename = "tenant.step.succeeded")]
    StepSucceeded,
    #[serde(rename = "tenant.step.failed")]
    StepFailed,
    #[serde(rename = "tenant.active")]
    TenantActive,
    #[serde(rename = "tenant.failed")]
    TenantFailed,
    /// The account creation budget is spent; the tenant waits for it (once per tenant).
    #[serde(rename = "tenant.creation_budget.exhausted")]
    CreationBudgetExhausted,
    /// Offboarding was asked for: the endpoint goes dark, the grace period starts.
    #[serde(rename = "tenant.offboarding")]
    TenantOffboarding,
    /// An offboarding tenant was brought back within its grace period.
    #[serde(rename = "tenant.restored")]
    TenantRestored,
    /// Offboarding is done: the tenant's AWS resources are gone and its account closed.
    #[serde(rename = "tenant.closed")]
    TenantClosed,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::TenantCreated => "tenant.created",
            EventType::StepSucceeded => "tenant.step.succeeded",
            EventType::StepFailed => "tenant.step.failed",
            EventType::TenantActive => "tenant.active",
            EventType::TenantFailed => "tenant.failed",
            EventType::CreationBudgetExhausted => "tenant.creation_budget.exhausted",
            EventType::TenantOffboarding => "tenant.offboarding",
            EventType::TenantRestored => "tenant.restored",
            EventType::TenantClosed => "tenant.closed",
        }
    }
}
