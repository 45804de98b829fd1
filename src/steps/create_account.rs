//! `create_account`: make sure exactly one `CreateAccount` request exists for the tenant.
//!
//! `CreateAccount` has no client token, so a blind retry can create a second account, the worst bug this
//! product can have. The rules:
//! 1. An account or request already recorded for the tenant: done.
//! 2. The organization index (synced from ListAccounts) has the tenant's root e-mail: adopt it.
//! 3. An earlier attempt recorded its *intent* to call but not the answer (it crashed, or the answer
//!    was lost): the outcome is unknown, so look in AWS itself — ListAccounts by e-mail and
//!    ListCreateAccountStatus by name (both O(n), so only on this path) — and adopt what is there.
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
use crate::domain::{StepError, StepOutcome};
use crate::engine::{Step, StepContext};

use super::{Silo, finish};

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
impl Step for CreateAccount {
    async fn run(&self, ctx: &mut StepContext) -> StepOutcome {
        finish(match ensure_requested(&self.0, ctx).await {
            Ok(Requested::Known) => Ok(StepOutcome::Succeeded),
            Ok(Requested::Unsure(after)) => Ok(StepOutcome::Wait {
                after,
                note:
                    "an earlier CreateAccount may still be in flight; looking again before calling"
                        .into(),
            }),
            Ok(Requested::NoSlot) => Ok(queued(&self.0)),
            Err(e) => Err(e),
        })
    }
}

async fn adopt(ctx: &mut StepContext, account_id: &str, how: &str) -> Result<(), StepError> {
    tracing::info!(
        account.id = account_id,
        how,
        "adopting the tenant's existing account"
    );
    ctx.save_resource("account_id", account_id).await?;
    ctx.set_resource("account_adopted", how);
    Ok(())
}

pub(crate) async fn ensure_requested(
    silo: &Silo,
    ctx: &mut StepContext,
) -> Result<Requested, StepError> {
    if ctx.resource_str("account_id").is_some() || ctx.resource_str("create_request_id").is_some() {
        return Ok(Requested::Known);
    }
    let slug = ctx.tenant.slug.clone();
    let email = silo.settings.account_email(&slug);
    let name = silo.settings.account_name(&slug);

    let indexed = db::org::account_by_email(&silo.pool, &email)
        .await
        .map_err(db_error)?;
    if let Some(a) = indexed {
        adopt(ctx, &a.account_id, "found in the organization index").await?;
        return Ok(Requested::Known);
    }

    if let Some(intent) = ctx.resource_str("create_intent_at").map(str::to_owned) {
        if let Some(a) = silo.orgs.find_account_by_email(&email).await? {
            adopt(ctx, &a.id, "found by e-mail after an unknown outcome").await?;
            return Ok(Requested::Known);
        }
        if let Some(r) = silo.orgs.find_create_request(&name).await? {
            tracing::info!(request.id = %r.id, "found the tenant's CreateAccount request after an unknown outcome");
            ctx.save_resource("create_request_id", r.id.clone()).await?;
            if let CreateState::Succeeded { account_id } = &r.state {
                ctx.save_resource("account_id", account_id.clone()).await?;
            }
            return Ok(Requested::Known);
        }
        let since = chrono::DateTime::parse_from_rfc3339(&intent)
            .map(|t| {
                (Utc::now() - t.with_timezone(&Utc))
                    .to_std()
                    .unwrap_or_default()
            })
            .unwrap_or(Duration::MAX);
        if since < silo.settings.unknown_outcome_grace {
            return Ok(Requested::Unsure(
                silo.settings.unknown_outcome_grace - since,
            ));
        }
        tracing::warn!(
            "no trace of an earlier CreateAccount; the call never reached AWS, calling again"
        );
    }

    let cap = silo.settings.create_account_concurrency;
    if !db::slots::acquire(&silo.pool, ctx.tenant.id, cap, SLOT_STALE_AFTER)
        .await
        .map_err(db_error)?
    {
        return Ok(Requested::NoSlot);
    }
    ctx.save_resource("create_intent_at", Utc::now().to_rfc3339())
        .await?;
    ctx.set_resource("account_email", email.clone());
    ctx.set_resource("account_name", name.clone());
    let tags = silo.account_tags(&slug, ctx.tenant.tier.as_str());
    match silo.orgs.create_account(&email, &name, &tags).await {
        Ok(r) => {
            ctx.save_resource("create_request_id", r.id.clone()).await?;
            if let CreateState::Succeeded { account_id } = &r.state {
                ctx.save_resource("account_id", account_id.clone()).await?;
            }
            tracing::info!(request.id = %r.id, "CreateAccount requested");
            Ok(Requested::Known)
        }
        Err(e) if !outcome_unknown(&e) => {
            // AWS answered no: nothing was created, so the next attempt need not search, and the slot
            // goes to the next tenant.
            ctx.set_resource("create_intent_at", Value::Null);
            release_slot(silo, ctx).await?;
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}
