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
    /// The AWS region of the tenant's stack, custom domain and certificate.
    pub region: Option<String>,
    /// The version (first 12 hex digits of the SHA-256) of the template the tenant stack runs: the one
    /// it was provisioned with, or the one a rollout last deployed.
    pub stack_version: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&db::tenants::Tenant> for TenantView {
    fn from(t: &db::tenants::Tenant) -> Self {
        let r = t.known_resources();
        Self {
            slug: t.slug.clone(),
            name: t.name.clone(),
            owner_email: t.owner_email.clone(),
            tier: t.tier,
            state: t.state,
            workflow: t.workflow.clone(),
            account_id: r.account_id,
            endpoint: r.endpoint,
            region: r.region,
            stack_version: r.tenant_stack_version,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryEntryView {
    /// The stored record's id. An attempt is stored once, when it ends, with its start: its
    /// `step.started` entry shares the id of the entry that ended it, and the attempt running now has
    /// a `step.started` entry with a null id.
    pub id: Option<i64>,
    pub at: DateTime<Utc>,
    /// e.g. `signup.accepted`, `step.started`, `step.succeeded`, `step.backoff`, `step.throttled`,
    /// `step.waiting`, `step.queued`, `step.failed`, `step.abandoned` (its worker's lease expired, or an
    /// operator rewound it), `tenant.state`, `operator.retry`, `operator.requeue`.
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

/// The history as the API shows it, oldest first: every stored entry, each attempt's start before the
/// entry that ended it, and the start of the attempt running now (`running`, the run's running step).
pub fn history(
    entries: Vec<db::history::Entry>,
    running: Option<&db::steps::Step>,
) -> Vec<HistoryEntryView> {
    let mut out = Vec::with_capacity(entries.len() * 2 + 1);
    // A poll or a throttle continues an attempt: its next segment "resumes" rather than "starts".
    let mut last_attempt: std::collections::HashMap<String, i32> = Default::default();
    let mut started = |id, at, step: &str, attempt: i32, token, actor: Option<String>| {
        let verb = if last_attempt.insert(step.to_owned(), attempt) == Some(attempt) {
            "resumed"
        } else {
            "started"
        };
        HistoryEntryView {
            id,
            at,
            kind: crate::domain::HistoryKind::StepStarted.as_str().into(),
            step: Some(step.to_owned()),
            attempt: Some(attempt),
            lease_token: token,
            actor,
            message: format!("attempt {attempt} {verb}"),
            detail: None,
        }
    };
    let mut ended = std::collections::HashSet::new();
    for e in entries {
        if let (Some(at), Some(step), Some(attempt)) = (e.started_at, &e.step, e.attempt) {
            ended.extend(e.lease_token);
            out.push(started(
                Some(e.id),
                at,
                step,
                attempt,
                e.lease_token,
                e.actor.clone(),
            ));
        }
        out.push(HistoryEntryView {
            id: Some(e.id),
            at: e.at,
            kind: e.kind,
            step: e.step,
            attempt: e.attempt,
            lease_token: e.lease_token,
            actor: e.actor,
            message: e.message,
            detail: e.detail,
        });
    }
    if let Some(s) = running.filter(|s| s.state == StepState::Running)
        && let Some(at) = s.attempt_started_at
        && !s.lease_token.is_some_and(|t| ended.contains(&t))
    {
        out.push(started(
            None,
            at,
            &s.name,
            s.attempts,
            s.lease_token,
            s.lease_owner.clone(),
        ));
    }
    out
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HistoryView {
    pub slug: String,
    pub history: Vec<HistoryEntryView>,
    /// Pass back as `cursor` for the entries after these; `null` on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RequeueRequest {
    /// The step to run again; it and every later step start over.
    pub from_step: String,
}

/// `POST /v1/retries`: which failed tenants to retry.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRetryRequest {
    /// Only tenants whose failed step is this one.
    pub step: Option<String>,
    /// Only tenants whose failed step ended with this error code.
    pub error_code: Option<String>,
    /// Say which tenants would be retried, and retry none.
    #[serde(default)]
    pub dry_run: bool,
}

/// A tenant a bulk retry matched.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BulkRetryTenant {
    pub slug: String,
    pub step: String,
    pub error_code: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BulkRetryView {
    pub dry_run: bool,
    /// Tenants whose current run has a failed step matching the filter (at most 1,000 a request).
    pub matched: usize,
    pub tenants: Vec<BulkRetryTenant>,
    /// The slugs retried (empty on a dry run; a tenant changed meanwhile is left out).
    pub retried: Vec<String>,
}

/// An open drift finding.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DriftFindingView {
    pub slug: String,
    /// What drifted: `account.parent`, `ou.scp:<name>`, `dns.record`, `apigateway.domain`,
    /// `apigateway.mapping` or `stack`.
    pub resource: String,
    pub detail: String,
    pub detected_at: DateTime<Utc>,
    /// When vend started repairing it (`VEND_DRIFT_REPAIR=auto`); it closes when a check no longer
    /// sees it.
    pub repaired_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DriftView {
    pub findings: Vec<DriftFindingView>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OffboardRequest {
    /// Why the tenant leaves (recorded in history and the `tenant.offboarding` event).
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OffboardWebhook {
    pub slug: String,
    #[serde(default)]
    pub reason: Option<String>,
}

/// A reason as stored: trimmed, at most 1,000 characters; absent or empty becomes `default`.
pub fn reason(r: Option<&str>, default: &str) -> Result<String, String> {
    let r = r
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .unwrap_or(default);
    if r.chars().count() > 1000 {
        return Err("reason must be at most 1000 characters".into());
    }
    Ok(r.to_owned())
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

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn t(s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 23, 12, 0, s).unwrap()
    }

    fn entry(
        id: i64,
        kind: &str,
        step: Option<(&str, i32, i64)>,
        started: Option<u32>,
    ) -> db::history::Entry {
        db::history::Entry {
            id,
            at: t(id as u32 * 2),
            kind: kind.into(),
            step: step.map(|s| s.0.into()),
            attempt: step.map(|s| s.1),
            lease_token: step.map(|s| s.2),
            actor: step.map(|_| "w1".into()),
            message: kind.into(),
            detail: None,
            started_at: started.map(t),
        }
    }

    fn running(name: &str, attempts: i32, token: i64, at: u32) -> db::steps::Step {
        db::steps::Step {
            position: 1,
            name: name.into(),
            state: StepState::Running,
            wait_reason: None,
            due_at: Some(t(59)),
            attempts,
            throttles: 0,
            polls: 0,
            last_error: None,
            last_error_code: None,
            started_at: Some(t(at)),
            finished_at: None,
            lease_owner: Some("w2".into()),
            lease_token: Some(token),
            attempt_started_at: Some(t(at)),
        }
    }

    fn summary(h: &[HistoryEntryView]) -> Vec<(Option<i64>, String, String)> {
        h.iter()
            .map(|e| (e.id, e.kind.clone(), e.message.clone()))
            .collect()
    }

    #[test]
    fn each_stored_attempt_shows_its_start_before_its_end_and_a_continued_attempt_resumes() {
        let h = history(
            vec![
                entry(1, "signup.accepted", None, None),
                entry(2, "step.succeeded", Some(("a", 1, 10)), Some(3)),
                entry(3, "step.waiting", Some(("b", 1, 11)), Some(4)),
                entry(4, "step.succeeded", Some(("b", 1, 12)), Some(7)),
            ],
            None,
        );
        let s = |id: i64, kind: &str, msg: &str| (Some(id), kind.to_string(), msg.to_string());
        assert_eq!(
            summary(&h),
            vec![
                s(1, "signup.accepted", "signup.accepted"),
                s(2, "step.started", "attempt 1 started"),
                s(2, "step.succeeded", "step.succeeded"),
                s(3, "step.started", "attempt 1 started"),
                s(3, "step.waiting", "step.waiting"),
                s(4, "step.started", "attempt 1 resumed"),
                s(4, "step.succeeded", "step.succeeded"),
            ]
        );
        // The start carries the attempt's own time, token and worker.
        assert_eq!(h[1].at, t(3));
        assert_eq!(h[1].lease_token, Some(10));
        assert_eq!(h[1].actor.as_deref(), Some("w1"));
        assert_eq!(h[1].step.as_deref(), Some("a"));
    }

    #[test]
    fn the_attempt_running_now_comes_last_once_even_if_it_ended_between_the_reads() {
        let stored = || {
            vec![
                entry(1, "step.succeeded", Some(("a", 1, 10)), Some(0)),
                entry(2, "step.abandoned", Some(("b", 1, 11)), Some(3)),
            ]
        };
        let now = running("b", 2, 12, 9);
        let h = history(stored(), Some(&now));
        let last = h.last().unwrap();
        assert_eq!(
            (last.id, last.kind.as_str(), last.message.as_str()),
            (None, "step.started", "attempt 2 started")
        );
        assert_eq!(
            (last.at, last.lease_token, last.actor.as_deref()),
            (t(9), Some(12), Some("w2"))
        );
        assert_eq!(h.len(), 5);

        // The steps were read while attempt 2 ran; it ended before the history was read.
        let mut ended = stored();
        ended.push(entry(3, "step.succeeded", Some(("b", 2, 12)), Some(9)));
        let h = history(ended, Some(&now));
        assert_eq!(h.len(), 6);
        assert_eq!(h.iter().filter(|e| e.lease_token == Some(12)).count(), 2);
        assert_eq!(h.last().unwrap().kind, "step.succeeded");
    }

    #[test]
    fn rows_written_before_attempts_were_stored_whole_pass_through() {
        let h = history(
            vec![
                entry(1, "step.started", Some(("a", 1, 10)), None),
                entry(2, "step.succeeded", Some(("a", 1, 10)), None),
            ],
            None,
        );
        assert_eq!(
            summary(&h)
                .into_iter()
                .map(|(_, k, _)| k)
                .collect::<Vec<_>>(),
            ["step.started", "step.succeeded"]
        );
    }
}
