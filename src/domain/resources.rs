//! What vend records of a tenant's AWS side as it learns it (`tenants.resources`, a JSON object that
//! each step patches): the names in one enum, so that the steps that write an entry and the drift
//! check, views and events that read it cannot disagree on a key, and the entries views need as a typed
//! struct.

use serde::Deserialize;

/// The stacks vend deploys into a tenant account, by the name their entries carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackKind {
    Baseline,
    Tenant,
    /// The shared pool's stack, recorded by the tenant whose step last converged it.
    Pool,
}

impl StackKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            StackKind::Baseline => "baseline",
            StackKind::Tenant => "tenant",
            StackKind::Pool => "pool",
        }
    }
}

/// One entry of a tenant's resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// The tenant's AWS account.
    AccountId,
    /// How an existing account was adopted as the tenant's (why it was proven its own).
    AccountAdopted,
    AccountEmail,
    AccountName,
    /// The CreateAccount request, and whether vend's own call made it.
    CreateRequestId,
    CreateRequestOurs,
    /// When vend was about to call CreateAccount (an intent: a crash after it means "look first").
    CreateIntentAt,
    /// When the creation started and how long it had been seen in progress (the learned wait).
    CreateStartedAt,
    CreateSeenInProgressS,
    /// When the tenant was told its creation waits for the account creation budget.
    CreationBudgetReported,
    /// The tenant OU the account was moved into.
    OuId,
    /// The role the baseline stack made for deployments.
    DeploymentRoleArn,
    /// A digest of the alternate contacts last set on the account (set again when they change).
    AlternateContacts,
    /// The Identity Center assignment (`instance|permission set|group`) vend made on the account.
    AccessAssignment,
    /// The default VPCs removed from the account, and those kept because something uses them.
    DefaultVpcs,
    /// The service quota values configured, and whether each was met or requested.
    ServiceQuotas,
    ApiId,
    ApiStage,
    DomainName,
    /// The API Gateway domain the tenant's record aliases.
    DomainTarget,
    CertificateArn,
    CertificateRequestedAt,
    CertificateSeenPendingS,
    /// `https://<slug>.<base domain>` once reachable.
    Endpoint,
    /// The tenant's region (from its signup).
    Region,
    /// The rollout whose template a rollout run deploys.
    RolloutId,
    /// An offboarding's end of the grace period, its reason, and the end of the endpoint's quiet time.
    OffboardAfter,
    OffboardReason,
    OffboardQuiesceUntil,
    /// A stack's id, the version of its template deployed, the failure vend saw, and the timing of
    /// the change in progress.
    StackId(StackKind),
    StackVersion(StackKind),
    StackFailed(StackKind),
    StackOpStartedAt(StackKind),
    StackOpSeenS(StackKind),
    /// A pool tenant's API key in the pool account, and the tier whose usage plan it is on.
    PoolApiKeyId,
    PoolPlanTier,
    /// The tier a tier change in progress moves the tenant to, and when an account it leaves may go.
    TierTo,
    RetireAfter,
    /// Accounts the tenant left by a tier change (closed).
    RetiredAccounts,
    /// An entry of a step outside vend's own workflows (an extension's, a test's).
    Named(&'static str),
}

impl Resource {
    /// The entry's key in `tenants.resources`.
    pub const fn key(self) -> &'static str {
        use Resource::*;
        use StackKind::{Baseline, Pool, Tenant};
        match self {
            AccountId => "account_id",
            AccountAdopted => "account_adopted",
            AccountEmail => "account_email",
            AccountName => "account_name",
            CreateRequestId => "create_request_id",
            CreateRequestOurs => "create_request_ours",
            CreateIntentAt => "create_intent_at",
            CreateStartedAt => "create_started_at",
            CreateSeenInProgressS => "create_seen_in_progress_s",
            CreationBudgetReported => "creation_budget_reported",
            OuId => "ou_id",
            DeploymentRoleArn => "deployment_role_arn",
            AlternateContacts => "alternate_contacts",
            AccessAssignment => "identity_center_assignment",
            DefaultVpcs => "default_vpcs",
            ServiceQuotas => "service_quotas",
            ApiId => "api_id",
            ApiStage => "api_stage",
            DomainName => "domain_name",
            DomainTarget => "domain_target",
            CertificateArn => "certificate_arn",
            CertificateRequestedAt => "certificate_requested_at",
            CertificateSeenPendingS => "certificate_seen_pending_s",
            Endpoint => "endpoint",
            Region => "region",
            RolloutId => "rollout_id",
            OffboardAfter => "offboard_after",
            OffboardReason => "offboard_reason",
            OffboardQuiesceUntil => "offboard_quiesce_until",
            StackId(Baseline) => "baseline_stack_id",
            StackId(Tenant) => "tenant_stack_id",
            StackVersion(Baseline) => "baseline_stack_version",
            StackVersion(Tenant) => "tenant_stack_version",
            StackFailed(Baseline) => "baseline_failed",
            StackFailed(Tenant) => "tenant_failed",
            StackOpStartedAt(Baseline) => "baseline_op_started_at",
            StackOpStartedAt(Tenant) => "tenant_op_started_at",
            StackOpSeenS(Baseline) => "baseline_op_seen_s",
            StackOpSeenS(Tenant) => "tenant_op_seen_s",
            StackId(Pool) => "pool_stack_id",
            StackVersion(Pool) => "pool_stack_version",
            StackFailed(Pool) => "pool_failed",
            StackOpStartedAt(Pool) => "pool_op_started_at",
            StackOpSeenS(Pool) => "pool_op_seen_s",
            PoolApiKeyId => "pool_api_key_id",
            PoolPlanTier => "pool_plan_tier",
            TierTo => "tier_to",
            RetireAfter => "retire_after",
            RetiredAccounts => "retired_accounts",
            Named(key) => key,
        }
    }
}

/// The entries views and events show, read from `tenants.resources`. Unknown entries are ignored and
/// a missing or malformed one reads as absent, so an old row never breaks a page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct Resources {
    #[serde(deserialize_with = "lenient")]
    pub account_id: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub endpoint: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub region: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub domain_target: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub tenant_stack_version: Option<String>,
    #[serde(deserialize_with = "lenient")]
    pub baseline_stack_version: Option<String>,
}

impl Resources {
    pub fn from_json(v: &serde_json::Value) -> Resources {
        Resources::deserialize(v).unwrap_or_default()
    }
}

/// A string entry; anything else (null, a number left by an older version) is absent.
fn lenient<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_are_the_names_stored_so_far() {
        assert_eq!(Resource::AccountId.key(), "account_id");
        assert_eq!(
            Resource::StackId(StackKind::Tenant).key(),
            "tenant_stack_id"
        );
        assert_eq!(
            Resource::StackOpSeenS(StackKind::Baseline).key(),
            "baseline_op_seen_s"
        );
        assert_eq!(
            Resource::StackVersion(StackKind::Tenant).key(),
            "tenant_stack_version"
        );
    }

    #[test]
    fn the_typed_view_reads_what_is_there_and_ignores_the_rest() {
        let r = Resources::from_json(&json!({
            "account_id": "123456789012", "endpoint": null, "region": 7, "other": {"x": 1}
        }));
        assert_eq!(r.account_id.as_deref(), Some("123456789012"));
        assert_eq!(r.endpoint, None);
        assert_eq!(r.region, None);
        assert_eq!(
            Resources::from_json(&json!("not an object")),
            Resources::default()
        );
    }
}
