//! Progress events: what receivers of webhooks and EventBridge see. Types are part of the contract.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{Resource, StepError, TenantState, Tier};

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
    /// The tenant's tier changed: its endpoint is served by its new home from now on.
    #[serde(rename = "tenant.tier.changed")]
    TierChanged,
    /// A tier change finished: the old home is gone (the pool registration removed, or the old
    /// account closed after its grace period).
    #[serde(rename = "tenant.tier.completed")]
    TierChangeCompleted,
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
            EventType::TierChanged => "tenant.tier.changed",
            EventType::TierChangeCompleted => "tenant.tier.completed",
        }
    }
}

/// The tenant as every event shows it, whatever the type: receivers read one shape. The owner e-mail
/// is stored with the event and removed on the way out unless `VEND_EVENTS_INCLUDE_OWNER_EMAIL` is set
/// (see [`strip_owner_email`]), so that rule is kept in one place, the dispatcher.
#[derive(Debug, Clone, Serialize)]
pub struct EventTenant<'a> {
    pub slug: &'a str,
    pub name: &'a str,
    pub owner_email: &'a str,
    pub tier: Tier,
    pub state: TenantState,
    pub account_id: Option<&'a str>,
    pub endpoint: Option<&'a str>,
    pub region: Option<&'a str>,
}

impl<'a> EventTenant<'a> {
    /// The resource fields from a tenant's resources object.
    pub fn with_resources(mut self, resources: &'a Map<String, Value>) -> Self {
        let get = |r: Resource| resources.get(r.key()).and_then(Value::as_str);
        self.account_id = get(Resource::AccountId);
        self.endpoint = get(Resource::Endpoint);
        self.region = get(Resource::Region);
        self
    }
}

/// The step an event is about.
#[derive(Debug, Clone, Serialize)]
pub struct EventStep<'a> {
    pub name: &'a str,
    /// `succeeded` or `failed`.
    pub state: &'static str,
    pub attempts: i32,
    pub error: Option<EventError<'a>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EventError<'a> {
    pub code: &'a str,
    pub message: &'a str,
}

impl<'a> From<&'a StepError> for EventError<'a> {
    fn from(e: &'a StepError) -> Self {
        Self {
            code: &e.code,
            message: &e.message,
        }
    }
}

/// The body of every progress event: `{"tenant": ..., "step": ... | null}` and what the type adds
/// (`detail`, `findings`, ...).
pub fn payload(tenant: &EventTenant<'_>, step: Option<&EventStep<'_>>, extra: Value) -> Value {
    let mut body = Map::new();
    body.insert(
        "tenant".into(),
        serde_json::to_value(tenant).expect("events serialize"),
    );
    body.insert(
        "step".into(),
        serde_json::to_value(step).expect("events serialize"),
    );
    if let Value::Object(extra) = extra {
        body.extend(extra);
    }
    Value::Object(body)
}

/// Removes the tenant's owner e-mail from an event body: personal data leaves vend only when
/// configured to.
pub fn strip_owner_email(payload: &mut Value) {
    if let Some(t) = payload.get_mut("tenant").and_then(Value::as_object_mut) {
        t.remove("owner_email");
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_event_has_the_same_tenant_shape_and_the_e_mail_comes_off() {
        let resources = json!({"account_id": "123456789012", "region": "eu-west-1", "other": 1});
        let tenant = EventTenant {
            slug: "acme",
            name: "Acme",
            owner_email: "ops@acme.example",
            tier: Tier::Enterprise,
            state: TenantState::Provisioning,
            account_id: None,
            endpoint: None,
            region: None,
        }
        .with_resources(resources.as_object().unwrap());
        let step = EventStep {
            name: "deploy_stack",
            state: "failed",
            attempts: 3,
            error: Some(EventError {
                code: "Boom",
                message: "it broke",
            }),
        };
        let mut body = payload(&tenant, Some(&step), json!({"detail": {"x": 1}}));
        assert_eq!(
            body,
            json!({
                "tenant": {"slug": "acme", "name": "Acme", "owner_email": "ops@acme.example",
                           "tier": "enterprise", "state": "provisioning", "account_id": "123456789012",
                           "endpoint": null, "region": "eu-west-1"},
                "step": {"name": "deploy_stack", "state": "failed", "attempts": 3,
                         "error": {"code": "Boom", "message": "it broke"}},
                "detail": {"x": 1},
            })
        );
        strip_owner_email(&mut body);
        assert!(body["tenant"].get("owner_email").is_none());
        assert_eq!(payload(&tenant, None, Value::Null)["step"], Value::Null);
    }
}
