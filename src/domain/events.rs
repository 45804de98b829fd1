//! Progress events: what receivers of webhooks and EventBridge see. Types are part of the contract.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

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
    /// A rollout updated the tenant's stack.
    #[serde(rename = "tenant.stack.updated")]
    StackUpdated,
    /// A drift check found something of the tenant's changed behind vend's back.
    #[serde(rename = "tenant.drift.detected")]
    DriftDetected,
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
            EventType::StackUpdated => "tenant.stack.updated",
            EventType::DriftDetected => "tenant.drift.detected",
        }
    }
}

/// One event for an event bus.
#[derive(Debug, Clone)]
pub struct BusEvent {
    pub id: Uuid,
    pub detail_type: String,
    pub detail: String,
    pub time: DateTime<Utc>,
}

/// An event bus (EventBridge): the outbox dispatcher's port, implemented in `aws::eventbridge`. Implementations send at most [`BUS_BATCH`] events per call and report a
/// result per event, so partial failures are retried one by one.
#[async_trait]
pub trait EventBus: Send + Sync {
    fn name(&self) -> &str;
    /// `Err` fails the whole batch; `Ok` has one result per event, in order.
    async fn put(&self, events: &[BusEvent]) -> Result<Vec<Result<(), String>>, String>;
}

/// EventBridge `PutEvents` takes at most 10 entries.
pub const BUS_BATCH: usize = 10;
