//! `await_account`: poll `DescribeCreateAccountStatus` as a durable timer until the account exists.
//! A failed request is mapped by its `FailureReason`: duplicates are adopted, AWS-internal failures
//! start a fresh request, everything else is a readable permanent failure for ops.

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::aws::organizations::{CreateState, failure_reason};
use crate::db;
use crate::db::org::OrgAccount;
use crate::domain::Resource;
use crate::domain::{ErrorClass, StepError, StepOutcome};
use crate::engine::{NamedStep, StepContext};

use super::Silo;
use super::create_account::{
    OWN_REQUEST, Requested, TENANT_TAG, conflict, ensure_requested, owned_account, queued,
    release_slot,
};
use super::timing::{Timed, secs};

pub struct AwaitAccount(pub Arc<Silo>);

#[async_trait]
impl NamedStep for AwaitAccount {
    const KIND: &'static str = "await_account";
    async fn attempt(&self, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
        run(&self.0, ctx).await
    }
}

async fn run(silo: &Silo, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
    if let Some(account_id) = ctx.resource_str(Resource::AccountId).map(str::to_owned) {
        return finish_account(silo, ctx, &account_id).await;
    }
    // No request recorded (an earlier one failed and was cleared): start a new one.
    let Some(request_id) = ctx
        .resource_str(Resource::CreateRequestId)
        .map(str::to_owned)
    else {
        return match ensure_requested(silo, ctx).await? {
            Requested::Known => Ok(StepOutcome::Wait {
                after: ctx.poll_interval,
                note: "CreateAccount requested again".into(),
            }),
            Requested::Unsure(after) => Ok(StepOutcome::Wait {
                after,
                note: "an earlier CreateAccount may still be in flight".into(),
            }),
            Requested::NoSlot => Ok(queued(silo)),
        };
    };
    // How long account creation takes here, learned from earlier ones; the looks are timed around it.
    let expected = CREATION.expected(&silo.pool).await?;
    if let Some(after) = CREATION.too_early(ctx, expected) {
        // Straight after CreateAccount: no point asking before the account can be there.
        return Ok(StepOutcome::Wait {
            after,
            note: format!(
                "account creation usually takes {}",
                secs(expected.unwrap_or_default())
            ),
        });
    }
    let r = silo.orgs.describe_create_request(&request_id).await?;
    match r.state {
        CreateState::InProgress => {
            let (after, note) = CREATION.unfinished(ctx, expected);
            Ok(StepOutcome::Wait {
                after,
                note: format!("IN_PROGRESS: {note}"),
            })
        }
        CreateState::Succeeded { account_id } => {
            CREATION.finished_in(&silo.pool, ctx, r.took).await?;
            ctx.set_resource(Resource::CreateIntentAt, Value::Null);
            ctx.save_resource(Resource::AccountId, account_id.clone())
                .await?;
            finish_account(silo, ctx, &account_id).await
        }
        CreateState::Failed { reason } => failed(silo, ctx, &reason).await,
    }
}

/// How account creation is timed: from when `CreateAccount` answered (AWS started the request before
/// that, so looks timed from it are never early), or from the intent recorded just before the call
/// when the request was found after an unknown outcome.
pub(crate) const CREATION: Timed<'static> = Timed {
    kind: "create_account",
    started_key: Resource::CreateStartedAt,
    seen_key: Resource::CreateSeenInProgressS,
};

/// The account exists: make sure it is the tenant's own (it carries `vend:tenant=<slug>`, which vend
/// passed to CreateAccount), bring its other tags up to date, and index it. An account without that
/// proof is forgotten and left exactly as it is.
async fn finish_account(
    silo: &Silo,
    ctx: &mut StepContext,
    account_id: &str,
) -> Result<StepOutcome, StepError> {
    release_slot(silo, ctx).await?;
    let slug = ctx.tenant.slug.clone();
    // Made by vend's own request (which passed every tag) or adopted after its tag was checked: the
    // proof is in hand. Otherwise (a request found by name after an unknown outcome) look.
    let proven = ctx.resource(OWN_REQUEST) == Some(&Value::Bool(true))
        || ctx.resource_str(Resource::AccountAdopted).is_some();
    if !proven {
        let have = silo.orgs.tags_of(account_id).await?;
        if !have.iter().any(|(k, v)| k == TENANT_TAG && *v == slug) {
            for key in [
                Resource::AccountId,
                Resource::CreateRequestId,
                Resource::CreateIntentAt,
                Resource::CreateStartedAt,
            ] {
                ctx.save_resource(key, Value::Null).await?;
            }
            return Err(conflict(silo, &slug, account_id));
        }
        let want = silo.account_tags(&slug, ctx.tenant.tier.as_str());
        if !want.iter().all(|t| have.contains(t)) {
            silo.orgs.tag_account(account_id, &want).await?;
        }
    }
    let email = silo.settings.account_email(&ctx.tenant.slug);
    let entry = OrgAccount {
        account_id: account_id.to_owned(),
        email,
        name: silo.settings.account_name(&ctx.tenant.slug),
        status: "ACTIVE".into(),
    };
    db::org::upsert_account(&silo.pool, &entry)
        .await
        .map_err(|e| StepError::transient("DatabaseError", e.to_string()))?;
    Ok(StepOutcome::Succeeded)
}

async fn failed(
    silo: &Silo,
    ctx: &mut StepContext,
    reason: &str,
) -> Result<StepOutcome, StepError> {
    let email = silo.settings.account_email(&ctx.tenant.slug);
    let name = silo.settings.account_name(&ctx.tenant.slug);
    match reason {
        // The tenant's account already exists (an earlier request won) or is being made: adopt it.
        "EMAIL_ALREADY_EXISTS" | "CONCURRENT_ACCOUNT_MODIFICATION" => {
            let found = silo.orgs.find_accounts(&email, &name).await?;
            let slug = ctx.tenant.slug.clone();
            if let Some(id) = owned_account(silo, &slug, found.into_iter().map(|a| a.id)).await? {
                tracing::info!(account.id = %id, reason, "adopting the tenant's existing account");
                ctx.save_resource(Resource::AccountId, id.clone()).await?;
                ctx.set_resource(Resource::AccountAdopted, reason);
                return finish_account(silo, ctx, &id).await;
            }
            if let Some(r) = silo.orgs.find_create_request(&name).await? {
                ctx.set_resource(OWN_REQUEST, Value::Null);
                ctx.save_resource(Resource::CreateRequestId, r.id).await?;
                return Ok(StepOutcome::Wait {
                    after: ctx.poll_interval,
                    note: "following the request already in progress".into(),
                });
            }
            let (_, what) = failure_reason(reason);
            Err(StepError::transient(
                reason,
                format!("{what}, but it is not visible yet"),
            ))
        }
        _ => {
            // This request is finished for good; a later attempt (or an operator's retry) starts a new one.
            release_slot(silo, ctx).await?;
            ctx.set_resource(Resource::CreateRequestId, Value::Null);
            ctx.set_resource(OWN_REQUEST, Value::Null);
            ctx.set_resource(Resource::CreateIntentAt, Value::Null);
            ctx.set_resource(Resource::CreateStartedAt, Value::Null);
            ctx.set_resource(Resource::CreateSeenInProgressS, Value::Null);
            let (class, what) = failure_reason(reason);
            let e = StepError::new(
                class,
                reason,
                format!("CreateAccount failed: {what} ({reason})"),
            );
            if class == ErrorClass::Permanent {
                tracing::warn!(reason, "CreateAccount failed permanently");
            }
            Err(e)
        }
    }
}
