//! The steps of the offboard workflow. Each tears down one thing that vend made for the tenant, looks
//! before it acts, and treats "already gone" as done, so it can run any number of times. None of them
//! removes what does not carry vend's proof for the tenant: the central record only when it points at
//! the tenant's own domain, the stack only when tagged `vend:tenant=<slug>`, the account only when
//! tagged so.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::aws::apigateway::ApiGateway;
use crate::aws::cloudformation::Cfn;
use crate::aws::organizations::CreateState;
use crate::db;
use crate::db::closures::Closure;
use crate::domain::Resource;
use crate::domain::{ErrorClass, StepError, StepOutcome};
use crate::engine::{NamedStep, StepContext};

use super::Silo;
use super::create_account::{TENANT_TAG, owned_account, release_slot, still_in_flight};
use super::deploy_stack::STACK_NAME;

/// The step kinds of the offboard workflow, in order (workflows/offboard.toml).
pub const OFFBOARD_KINDS: [&str; 6] = [
    DarkenEndpoint::KIND,
    GracePeriod::KIND,
    UnmapDomain::KIND,
    super::tier::LeavePool::KIND,
    DeleteStack::KIND,
    CloseAccount::KIND,
];

/// How long until the RFC 3339 time `at`, if it is still ahead.
pub(super) fn time_until(at: Option<&str>) -> Option<Duration> {
    let at = DateTime::parse_from_rfc3339(at?).ok()?.with_timezone(&Utc);
    (at - Utc::now()).to_std().ok().filter(|d| !d.is_zero())
}

fn db_error(e: sqlx::Error) -> StepError {
    StepError::transient("DatabaseError", e.to_string())
}

/// `darken_endpoint`: the tenant's name stops resolving (its record leaves the central zone, only
/// while it points at the tenant's own domain) and its API stops answering at the domain (the root
/// mapping goes); the domain, certificate, stack and account stay for a restore, which maps it all
/// again.
pub struct DarkenEndpoint(pub Arc<Silo>);

#[async_trait]
impl NamedStep for DarkenEndpoint {
    const KIND: &'static str = "darken_endpoint";
    async fn attempt(&self, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
        darken(&self.0, ctx).await
    }
}

async fn darken(silo: &Silo, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
    if let Some(left) = time_until(ctx.resource_str(Resource::OffboardQuiesceUntil)) {
        return Ok(StepOutcome::Wait {
            after: left,
            note: "waiting for the interrupted provisioning step's lease to end".into(),
        });
    }
    remove_record(silo, ctx).await?;
    let (Some(account), Some(domain)) = (
        ctx.resource_str(Resource::AccountId).map(str::to_owned),
        ctx.resource_str(Resource::DomainName).map(str::to_owned),
    ) else {
        return Ok(StepOutcome::Succeeded);
    };
    let aws = super::in_tenant_region(silo, ctx, &account).await?;
    ApiGateway::new(&aws).delete_root_mapping(&domain).await?;
    Ok(StepOutcome::Succeeded)
}

/// Deletes the tenant's record from the central zone if it points at the tenant's own domain target;
/// a record pointing elsewhere is someone else's and stays.
async fn remove_record(silo: &Silo, ctx: &StepContext) -> Result<(), StepError> {
    let Some(target) = ctx.resource_str(Resource::DomainTarget).map(str::to_owned) else {
        return Ok(());
    };
    let domain = silo.settings.tenant_domain(&ctx.tenant.slug);
    let zone = &silo.management.hosted_zone_id;
    if !silo
        .route53
        .delete_if_points_at(zone, &domain, &target)
        .await?
        && let Some(other) = silo.route53.target_of(zone, &domain).await?
    {
        tracing::warn!(record = %domain, points_at = %other,
            "the tenant's name in the central zone points elsewhere; leaving it alone");
    }
    Ok(())
}

/// `grace_period`: a durable timer until the time the offboard recorded (`VEND_OFFBOARD_GRACE` after
/// it was asked for). Until it ends the tenant can be restored.
pub struct GracePeriod;

#[async_trait]
impl NamedStep for GracePeriod {
    const KIND: &'static str = "grace_period";
    async fn attempt(&self, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
        let until = ctx.resource_str(Resource::OffboardAfter).map(str::to_owned);
        Ok(match time_until(until.as_deref()) {
            Some(left) => StepOutcome::Wait {
                after: left,
                note: format!(
                    "grace period: restorable until {}",
                    until.unwrap_or_default()
                ),
            },
            None => StepOutcome::Succeeded,
        })
    }
}

/// `unmap_domain`: the tenant's record leaves the central zone (only if it still points at the
/// tenant's domain) and the custom domain leaves the tenant account.
pub struct UnmapDomain(pub Arc<Silo>);

#[async_trait]
impl NamedStep for UnmapDomain {
    const KIND: &'static str = "unmap_domain";
    async fn attempt(&self, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
        unmap(&self.0, ctx).await
    }
}

async fn unmap(silo: &Silo, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
    let domain = silo.settings.tenant_domain(&ctx.tenant.slug);
    remove_record(silo, ctx).await?;
    if let Some(account) = ctx.resource_str(Resource::AccountId).map(str::to_owned) {
        let aws = super::in_tenant_region(silo, ctx, &account).await?;
        let apigw = ApiGateway::new(&aws);
        apigw.delete_root_mapping(&domain).await?;
        apigw.delete_domain(&domain).await?;
    }
    ctx.set_resource(Resource::Endpoint, Value::Null);
    Ok(StepOutcome::Succeeded)
}

/// `delete_stack`: the tenant stack goes, and the step waits for CloudFormation to finish.
pub struct DeleteStack(pub Arc<Silo>);

#[async_trait]
impl NamedStep for DeleteStack {
    const KIND: &'static str = "delete_stack";
    async fn attempt(&self, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
        delete_stack(&self.0, ctx).await
    }
}

async fn delete_stack(silo: &Silo, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
    let Some(account) = ctx.resource_str(Resource::AccountId).map(str::to_owned) else {
        return Ok(StepOutcome::Succeeded);
    };
    let cfn = Cfn::new(&super::in_tenant_region(silo, ctx, &account).await?);
    let Some(stack) = cfn.describe(STACK_NAME).await? else {
        return Ok(StepOutcome::Succeeded);
    };
    if stack.tags.get(TENANT_TAG).map(String::as_str) != Some(ctx.tenant.slug.as_str()) {
        return Err(StepError::permanent(
            "StackNotOurs",
            format!(
                "the stack {STACK_NAME} in account {account} is not tagged {TENANT_TAG}={}; vend \
                 leaves it alone. Delete it yourself or requeue from close_account",
                ctx.tenant.slug
            ),
        ));
    }
    if stack.status == "DELETE_IN_PROGRESS" {
        return Ok(StepOutcome::Wait {
            after: ctx.poll_interval,
            note: "the tenant stack is being deleted".into(),
        });
    }
    if stack.status.ends_with("_IN_PROGRESS") {
        return Ok(StepOutcome::Wait {
            after: ctx.poll_interval,
            note: format!(
                "the tenant stack is {}; deleting it when that ends",
                stack.status
            ),
        });
    }
    // One token per attempt: a repeat within the attempt is the same request; a DELETE_FAILED stack
    // gets a fresh one on the next attempt.
    let token = format!("vend-delete-{}-{}", ctx.tenant.id.simple(), ctx.attempt);
    cfn.delete(&stack.stack_id, &token).await?;
    // Some deletions are over at once (an empty stack, an emulator): no wait for those.
    match cfn.describe(&stack.stack_id).await? {
        None => Ok(StepOutcome::Succeeded),
        Some(s) => Ok(StepOutcome::Wait {
            after: ctx.poll_interval,
            note: format!("tenant stack deletion started ({})", s.status),
        }),
    }
}

/// `close_account`: CloseAccount for the tenant's account, within AWS's quota (shared by every
/// replica through Postgres), then a wait until AWS reports it closing.
pub struct CloseAccount(pub Arc<Silo>);

#[async_trait]
impl NamedStep for CloseAccount {
    const KIND: &'static str = "close_account";
    async fn attempt(&self, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
        close(&self.0, ctx).await
    }
}

/// Removes the Identity Center assignment vend made on the account (the one recorded with the tenant,
/// even if the configuration has changed since), before the account is closed. Gone already is done.
async fn revoke_access(
    silo: &Silo,
    ctx: &mut StepContext,
    account: &str,
) -> Result<Option<StepOutcome>, StepError> {
    let region = silo
        .settings
        .identity_center
        .as_ref()
        .and_then(|c| c.region.clone());
    let Some(ic) = ctx
        .resource_str(Resource::AccessAssignment)
        .and_then(|made| crate::config::IdentityCenter::from_key(made, region))
    else {
        return Ok(None);
    };
    let sso = crate::aws::identity_center::Sso::new(&silo.aws, ic);
    if sso.assigned(account).await? {
        use crate::aws::identity_center::Request;
        match sso.unassign(account).await? {
            Request::Succeeded => {}
            Request::InProgress => {
                return Ok(Some(StepOutcome::Wait {
                    after: Duration::from_secs(5),
                    note: "Identity Center is removing the ops group's access".into(),
                }));
            }
            Request::Failed(reason) => {
                return Err(StepError::transient(
                    "AccessRemovalFailed",
                    format!("Identity Center could not remove the ops group's access: {reason}"),
                ));
            }
        }
    }
    ctx.save_resource(Resource::AccessAssignment, Value::Null)
        .await?;
    Ok(None)
}

/// The tenant's account as far as provisioning got.
enum Found {
    Account(String),
    /// No account was made (or its request failed).
    Nothing,
    /// A creation is still in flight: look again later.
    Pending(Duration, String),
}

async fn tenant_account(silo: &Silo, ctx: &mut StepContext) -> Result<Found, StepError> {
    if let Some(id) = ctx.resource_str(Resource::AccountId) {
        return Ok(Found::Account(id.to_owned()));
    }
    if let Some(request) = ctx
        .resource_str(Resource::CreateRequestId)
        .map(str::to_owned)
    {
        return match silo.orgs.describe_create_request(&request).await?.state {
            CreateState::InProgress => Ok(Found::Pending(
                ctx.poll_interval,
                "the tenant's CreateAccount is still in progress".into(),
            )),
            CreateState::Succeeded { account_id } => {
                ctx.save_resource(Resource::AccountId, account_id.clone())
                    .await?;
                Ok(Found::Account(account_id))
            }
            CreateState::Failed { .. } => Ok(Found::Nothing),
        };
    }
    if let Some(intent) = ctx
        .resource_str(Resource::CreateIntentAt)
        .map(str::to_owned)
    {
        // Provisioning was cut off around its CreateAccount call: find what it made, by vend's tag.
        let slug = ctx.tenant.slug.clone();
        let (email, name) = (
            silo.settings.account_email(&slug),
            silo.settings.account_name(&slug),
        );
        let found = silo.orgs.find_accounts(&email, &name).await?;
        if let Some(id) = owned_account(silo, &slug, found.into_iter().map(|a| a.id)).await? {
            ctx.save_resource(Resource::AccountId, id.clone()).await?;
            return Ok(Found::Account(id));
        }
        if let Some(r) = silo.orgs.find_create_request(&name).await? {
            ctx.save_resource(Resource::CreateRequestId, r.id).await?;
            return Ok(Found::Pending(
                Duration::ZERO,
                "found the tenant's CreateAccount request".into(),
            ));
        }
        if let Some(left) = still_in_flight(silo, &intent) {
            return Ok(Found::Pending(
                left,
                "an interrupted CreateAccount may still be in flight".into(),
            ));
        }
    }
    Ok(Found::Nothing)
}

fn is_closed(status: &str) -> bool {
    matches!(status, "SUSPENDED" | "PENDING_CLOSURE")
}

async fn close(silo: &Silo, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
    let account = match tenant_account(silo, ctx).await? {
        Found::Pending(after, note) => return Ok(StepOutcome::Wait { after, note }),
        Found::Nothing => {
            release_slot(silo, ctx).await?;
            return Ok(StepOutcome::Succeeded);
        }
        Found::Account(id) => id,
    };
    // Its creation is over either way: the slot goes to the next tenant.
    release_slot(silo, ctx).await?;
    // Only the assignment vend recorded, so also on an account closed meanwhile.
    if let Some(wait) = revoke_access(silo, ctx, &account).await? {
        return Ok(wait);
    }
    match silo.orgs.account_status(&account).await?.as_deref() {
        None => return Ok(StepOutcome::Succeeded),
        Some(s) if is_closed(s) => return Ok(StepOutcome::Succeeded),
        Some(_) => {}
    }
    let tags = silo.orgs.tags_of(&account).await?;
    if !tags
        .iter()
        .any(|(k, v)| k == TENANT_TAG && v == &ctx.tenant.slug)
    {
        return Err(StepError::permanent(
            "AccountNotOurs",
            format!(
                "account {account} is not tagged {TENANT_TAG}={}; vend does not close it",
                ctx.tenant.slug
            ),
        ));
    }
    let members = db::closures::member_accounts(&silo.pool)
        .await
        .map_err(db_error)?;
    let quota = silo.settings.close_account_quota(members);
    let window = silo.settings.close_account_window;
    match db::closures::reserve(&silo.pool, ctx.tenant.id, &account, quota, window)
        .await
        .map_err(db_error)?
    {
        Closure::Granted => {}
        Closure::Full { used, frees_in } => {
            let mut e = StepError::new(
                ErrorClass::Throttled,
                "CloseAccountQuota",
                format!(
                    "the CloseAccount quota is spent ({used} of {quota} per {}); the next closure \
                     can go out in {}",
                    humantime::format_duration(window),
                    humantime::format_duration(Duration::from_secs(frees_in.as_secs().max(1))),
                ),
            );
            e.retry_after = Some(frees_in);
            return Err(e);
        }
    }
    match silo.orgs.close_account(&account).await {
        Ok(()) => {}
        Err(e) if e.code.starts_with("CLOSE_ACCOUNT") => {
            // AWS counts closures vend did not make: this one did not happen, and waits (an hour, or
            // the configured window when that is shorter).
            db::closures::forget(&silo.pool, ctx.tenant.id)
                .await
                .map_err(db_error)?;
            let mut e = StepError::from(e);
            e.retry_after = Some(Duration::from_secs(3600).min(window));
            return Err(e);
        }
        Err(e) => return Err(e.into()),
    }
    tracing::info!(account.id = %account, "CloseAccount requested");
    match silo.orgs.account_status(&account).await?.as_deref() {
        None => Ok(StepOutcome::Succeeded),
        Some(s) if is_closed(s) => Ok(StepOutcome::Succeeded),
        Some(s) => Ok(StepOutcome::Wait {
            after: ctx.poll_interval,
            note: format!("CloseAccount requested; the account is still {s}"),
        }),
    }
}
