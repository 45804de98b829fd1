//! The JSON shapes of the API (and of the OpenAPI document, which is generated from them).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::db;
use crate::domain::{StepState, TenantState, Tier};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TenantView {
    pub slug: String,
    pub name: String,
    pub owner_email: String,
    #[schema(value_type = String, example = "enterprise")]
    pub tier: Tier,
    #[schema(value_type = String, example = "provisioning")]
    pub state: TenantState,
    pub workflow: String,
    pub account_id: Option<String>,
    /// `https://<slug>.<base domain>` once the domain is mapped.
    pub endpoint: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&db::tenants::Tenant> for TenantView {
    fn from(t: &db::tenants::Tenant) -> Self {
        Self {
            slug: t.slug.clone(),
            name: t.name.clone(),
            owner_email: t.owner_email.clone(),
            tier: t.tier,
            state: t.state,
            workflow: t.workflow.clone(),
            account_id: t.account_id().map(str::to_owned),
            endpoint: t.endpoint().map(str::to_owned),
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StepView {
    pub name: String,
    #[schema(value_type = String, example = "waiting")]
    pub state: StepState,
    /// Attempts started; polls and throttled retries continue an attempt.
    pub attempts: i32,
    /// Throttled answers from AWS (they do not consume attempts).
    pub throttles: i32,
    /// Why a waiting step waits: `poll`, `backoff` or `throttle`.
    pub wait_reason: Option<String>,
    pub last_error: Option<String>,
    pub last_error_code: Option<String>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<&db::steps::Step> for StepView {
    fn from(s: &db::steps::Step) -> Self {
        Self {
            name: s.name.clone(),
            state: s.state,
            attempts: s.attempts,
            throttles: s.throttles,
            wait_reason: s.wait_reason.map(|r| r.as_str().to_owned()),
            last_error: s.last_error.clone(),
            last_error_code: s.last_error_code.clone(),
            next_attempt_at: s.next_attempt_at(),
            started_at: s.started_at,
            finished_at: s.finished_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TenantDetail {
    #[serde(flatten)]
    pub tenant: TenantView,
    /// Every step of the tenant's workflow, in order.
    pub steps: Vec<StepView>,
    /// External ids recorded for the tenant (account, stacks, domain).
    #[schema(value_type = Object)]
    pub resources: Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SignupAccepted {
    pub tenant: TenantView,
    /// Where ops follow the tenant's progress.
    pub status_url: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TenantPage {
    pub tenants: Vec<TenantView>,
    /// Pass back as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HistoryEntryView {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// e.g. `signup.accepted`, `step.started`, `step.succeeded`, `step.backoff`, `step.throttled`,
    /// `step.waiting`, `step.failed`, `tenant.state`, `operator.retry`, `operator.requeue`.
    pub kind: String,
    pub step: Option<String>,
    pub attempt: Option<i32>,
    /// The fencing token of the attempt: entries with the same token belong to one attempt.
    pub lease_token: Option<i64>,
    /// The worker or operator that acted.
    pub actor: Option<String>,
    pub message: String,
    #[schema(value_type = Object)]
    pub detail: Option<Value>,
}

impl From<db::history::Entry> for HistoryEntryView {
    fn from(e: db::history::Entry) -> Self {
        Self {
            id: e.id,
            at: e.at,
            kind: e.kind,
            step: e.step,
            attempt: e.attempt,
            lease_token: e.lease_token,
            actor: e.actor,
            message: e.message,
            detail: e.detail,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HistoryView {
    pub slug: String,
    pub history: Vec<HistoryEntryView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RequeueRequest {
    /// The step to run again; it and every later step start over.
    pub from_step: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryView {
    /// The `webhook-id` receivers see is `msg_` followed by this id without dashes.
    pub event_id: String,
    pub webhook_id: String,
    pub event_type: String,
    pub tenant: String,
    pub endpoint: String,
    /// `pending`, `delivered`, `failed` or `disabled`.
    pub state: String,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_status: Option<i32>,
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeliveryPage {
    pub deliveries: Vec<DeliveryView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
}
