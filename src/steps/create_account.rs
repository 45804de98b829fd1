//! `create_account`: make sure exactly one `CreateAccount` request exists for the tenant.
//!
//! `CreateAccount` has no client token, so a blind retry can create a second account, the worst bug this
//! product can have. The rules:
//! 1. An account or request already recorded for the tenant: done.
//! 2. The organization index (synced from ListAccounts) has an account with the tenant's root e-mail
//!    or name: adopt it if it carries `vend:tenant=<slug>` (vend passes that tag to CreateAccount, so
//!    only vend's own account for this tenant does); anything else fails the step, naming the account,
//!    and is left untouched: a signup must never pull someone else's account into the tenant OU.
//! 3. An earlier attempt recorded its *intent* to call but not the answer (it crashed, or the answer
//!    was lost): the outcome is unknown, so look in AWS itself — ListAccounts by e-mail and name and
//!    ListCreateAccountStatus by name (both O(n), so only on this path) — and adopt what is there,
//!    under the same proof.
//!    If nothing is there yet, wait out the longest time an earlier call could still be in flight
//!    before calling again.
//! 4. Otherwise record the intent (committed), call, and record the request id the moment it returns.
//!
//! `EMAIL_ALREADY_EXISTS` and `CONCURRENT_ACCOUNT_MODIFICATION` come back asynchronously; `await_account`
//! resolves them by adopting the matching account.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use serde_json::Value;

use crate::aws::classify::outcome_unknown;
use crate::aws::organizations::CreateState;
use crate::db;
use crate::db::slots::Slot;
use crate::domain::Resource;
use crate::domain::{ErrorClass, EventType, StepError, StepOutcome, TenantState};
use crate::engine::{NamedStep, StepContext};

use super::Silo;

pub struct CreateAccount(pub Arc<Silo>);

/// Where the tenant's account creation stands after [`ensure_requested`].
pub(crate) enum Requested {
    /// A request or the account itself is recorded.
    Known,
    /// An earlier call's outcome is still unknown; look again after this long.
    Unsure(Duration),
    /// All CreateAccount slots are taken; a freed slot wakes the longest waiter.
    NoSlot,
}

/// The longest a queued tenant waits before looking for a slot by itself. A release wakes the
/// longest-waiting tenant at once, so this only bounds the delay after a lost wake-up; long, so that
/// hundreds of queued tenants do not poll.
pub(crate) const SLOT_FALLBACK: Duration = Duration::from_secs(60);
/// A slot older than this no longer counts (see `db::slots::acquire`).
const SLOT_STALE_AFTER: Duration = Duration::from_secs(2 * 3600);

pub(crate) fn queued(silo: &Silo) -> StepOutcome {
    StepOutcome::Queued {
        after: SLOT_FALLBACK,
        note: format!(
            "waiting for a CreateAccount slot ({} in flight)",
            silo.settings.create_account_concurrency
        ),
    }
}

fn db_error(e: sqlx::Error) -> StepError {
    StepError::transient("DatabaseError", e.to_string())
}

/// Frees the tenant's CreateAccount slot (if it holds one) for the next tenant in line.
pub(crate) async fn release_slot(silo: &Silo, ctx: &StepContext) -> Result<(), StepError> {
    db::slots::release(&silo.pool, ctx.tenant.id)
        .await
        .map_err(db_error)
}

#[async_trait]
impl NamedStep for CreateAccount {
    const KIND: &'static str = "create_account";
    async fn attempt(&self, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
        Ok(match ensure_requested(&self.0, ctx).await? {
            Requested::Known => StepOutcome::Succeeded,
            Requested::Unsure(after) => StepOutcome::Wait {
                after,
                note:
                    "an earlier CreateAccount may still be in flight; looking again before calling"
                        .into(),
            },
            Requested::NoSlot => queued(&self.0),
        })
    }
}

/// The creation budget is spent: say so once per tenant (event, metric), then wait without calling
/// AWS and without spending attempts (a throttle-class error) until the window frees a request.
async fn over_budget(
    silo: &Silo,
    ctx: &mut StepContext,
    frees_in: Duration,
) -> Result<StepError, StepError> {
    let budget = silo.settings.creation_budget;
    let message = format!(
        "the account creation budget ({} per {}) is spent; the next CreateAccount can go out in {}",
        budget.accounts,
        humantime::format_duration(budget.window),
        humantime::format_duration(Duration::from_secs(frees_in.as_secs())),
    );
    silo.aws.metrics().creation_budget_waits.inc();
    if ctx.resource_str(Resource::CreationBudgetReported).is_none() {
        tracing::warn!(
            budget.accounts = budget.accounts,
            "account creation budget spent; the tenant waits"
        );
        let payload = crate::domain::events::payload(
            &ctx.tenant
                .for_event(TenantState::Provisioning, ctx.resources()),
            None,
            serde_json::json!({
                "budget": {"accounts": budget.accounts, "window_seconds": budget.window.as_secs()},
                "retry_in_seconds": frees_in.as_secs(),
            }),
        );
        db::outbox::report(
            &silo.pool,
            ctx.tenant.id,
            EventType::CreationBudgetExhausted,
            &payload,
        )
        .await
        .map_err(db_error)?;
        ctx.save_resource(Resource::CreationBudgetReported, Utc::now().to_rfc3339())
            .await?;
    }
    let mut e = StepError::new(ErrorClass::Throttled, "AccountCreationBudget", message);
    e.retry_after = Some(frees_in);
    Ok(e)
}

/// How much longer a `CreateAccount` whose intent was recorded at `intent` (RFC 3339) may still be in
/// flight, if it may: until then an unseen request is presumed on its way, not lost.
pub(crate) fn still_in_flight(silo: &Silo, intent: &str) -> Option<Duration> {
    let since = chrono::DateTime::parse_from_rfc3339(intent)
        .map(|t| {
            (Utc::now() - t.with_timezone(&Utc))
                .to_std()
                .unwrap_or_default()
        })
        .unwrap_or(Duration::MAX);
    silo.settings
        .unknown_outcome_grace
        .checked_sub(since)
        .filter(|d| !d.is_zero())
}

/// Set when the recorded request is the answer to vend's own `CreateAccount` (which passed the tags),
/// not one found by name: its account needs no look at its tags.
pub(crate) const OWN_REQUEST: Resource = Resource::CreateRequestOurs;

/// The tag that proves an account is vend's for a tenant.
pub(crate) const TENANT_TAG: &str = "vend:tenant";

/// Of the existing accounts that collide with the tenant's e-mail or name, the one that proves it is
/// the tenant's own (`vend:tenant=<slug>`). Colliding accounts without that proof fail the step with
/// their id and are never touched.
pub(crate) async fn owned_account(
    silo: &Silo,
    slug: &str,
    candidates: impl IntoIterator<Item = String>,
) -> Result<Option<String>, StepError> {
    let mut foreign = Vec::new();
    for id in candidates {
        if foreign.contains(&id) {
            continue;
        }
        let tags = silo.orgs.tags_of(&id).await?;
        if tags.iter().any(|(k, v)| k == TENANT_TAG && v == slug) {
            return Ok(Some(id));
        }
        foreign.push(id);
    }
    match foreign.first() {
        None => Ok(None),
        Some(id) => Err(conflict(silo, slug, id)),
    }
}

/// The step's error for an account that has the tenant's e-mail or name but is not vend's.
pub(crate) fn conflict(silo: &Silo, slug: &str, account_id: &str) -> StepError {
    tracing::warn!(
        account.id = account_id,
        "an account that is not the tenant's collides with its e-mail or name; leaving it alone"
    );
    StepError::permanent(
        "AccountConflict",
        format!(
            "account {account_id} has the tenant's root e-mail ({}) or name ({}) but is not tagged \
             {TENANT_TAG}={slug}; vend does not adopt, tag, move or enter it. Resolve it in AWS \
             (or offboard this tenant), then retry",
            silo.settings.account_email(slug),
            silo.settings.account_name(slug),
        ),
    )
}

async fn adopt(ctx: &mut StepContext, account_id: &str, how: &str) -> Result<(), StepError> {
    tracing::info!(
        account.id = account_id,
        how,
        "adopting the tenant's existing account"
    );
    ctx.save_resource(Resource::AccountId, account_id).await?;
    ctx.set_resource(Resource::AccountAdopted, how);
    Ok(())
}

pub(crate) async fn ensure_requested(
    silo: &Silo,
    ctx: &mut StepContext,
) -> Result<Requested, StepError> {
    if ctx.resource_str(Resource::AccountId).is_some()
        || ctx.resource_str(Resource::CreateRequestId).is_some()
    {
        return Ok(Requested::Known);
    }
    let slug = ctx.tenant.slug.clone();
    let email = silo.settings.account_email(&slug);
    let name = silo.settings.account_name(&slug);

    let indexed = db::org::accounts_matching(&silo.pool, &email, &name)
        .await
        .map_err(db_error)?;
    if let Some(id) = owned_account(silo, &slug, indexed.into_iter().map(|a| a.account_id)).await? {
        adopt(ctx, &id, "found in the organization index").await?;
        return Ok(Requested::Known);
    }

    if let Some(intent) = ctx
        .resource_str(Resource::CreateIntentAt)
        .map(str::to_owned)
    {
        let found = silo.orgs.find_accounts(&email, &name).await?;
        if let Some(id) = owned_account(silo, &slug, found.into_iter().map(|a| a.id)).await? {
            adopt(ctx, &id, "found after an unknown outcome").await?;
            return Ok(Requested::Known);
        }
        if let Some(r) = silo.orgs.find_create_request(&name).await? {
            tracing::info!(request.id = %r.id, "found the tenant's CreateAccount request after an unknown outcome");
            ctx.set_resource(OWN_REQUEST, Value::Null);
            ctx.set_resource(Resource::CreateStartedAt, intent.as_str());
            ctx.save_resource(Resource::CreateRequestId, r.id.clone())
                .await?;
            if let CreateState::Succeeded { account_id } = &r.state {
                ctx.save_resource(Resource::AccountId, account_id.clone())
                    .await?;
            }
            return Ok(Requested::Known);
        }
        if let Some(left) = still_in_flight(silo, &intent) {
            return Ok(Requested::Unsure(left));
        }
        tracing::warn!(
            "no trace of an earlier CreateAccount; the call never reached AWS, calling again"
        );
    }

    let cap = silo.settings.create_account_concurrency;
    let budget = silo.settings.creation_budget;
    match db::slots::acquire(
        &silo.pool,
        ctx.tenant.id,
        cap,
        SLOT_STALE_AFTER,
        budget.accounts,
        budget.window,
    )
    .await
    .map_err(db_error)?
    {
        Slot::Granted => {}
        Slot::Full => return Ok(Requested::NoSlot),
        Slot::OverBudget(frees_in) => return Err(over_budget(silo, ctx, frees_in).await?),
    }
    ctx.set_resource(Resource::CreateSeenInProgressS, Value::Null);
    ctx.set_resource(Resource::CreateStartedAt, Value::Null);
    ctx.save_resource(Resource::CreateIntentAt, Utc::now().to_rfc3339())
        .await?;
    ctx.set_resource(Resource::AccountEmail, email.clone());
    ctx.set_resource(Resource::AccountName, name.clone());
    // An upgrade's account is tagged with the tier it is made for.
    let tier = super::pool::target_tier(ctx);
    let tags = silo.account_tags(&slug, tier.as_str());
    match silo.orgs.create_account(&email, &name, &tags).await {
        Ok(r) => {
            // The account this request makes carries vend's tags from the start: no need to look.
            ctx.set_resource(OWN_REQUEST, true);
            ctx.set_resource(Resource::CreateStartedAt, Utc::now().to_rfc3339());
            ctx.save_resource(Resource::CreateRequestId, r.id.clone())
                .await?;
            if let CreateState::Succeeded { account_id } = &r.state {
                ctx.save_resource(Resource::AccountId, account_id.clone())
                    .await?;
            }
            tracing::info!(request.id = %r.id, "CreateAccount requested");
            Ok(Requested::Known)
        }
        Err(e) if !outcome_unknown(&e) => {
            // AWS answered no: nothing was created, so the next attempt need not search, and the slot
            // goes to the next tenant.
            ctx.set_resource(Resource::CreateIntentAt, Value::Null);
            release_slot(silo, ctx).await?;
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}
