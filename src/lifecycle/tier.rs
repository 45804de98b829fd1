//! Tier changes. A change starts a run of the workflow that moves the tenant between its tiers
//! (`workflows/`, `purpose = "tier"`): the tenant stays `active` and is served where it was until the
//! run's `switch_tier` step, right after the step that repoints its record; from then on its `tier`
//! reads the new value and `tenant.tier.changed` goes out. The run then removes the old home (the
//! pool registration, or the old account after its grace period) and ends with
//! `tenant.tier.completed`.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

use crate::db;
use crate::db::history::NewEntry;
use crate::db::tenants::Tenant;
use crate::domain::events;
use crate::domain::{EventType, HistoryKind, Resource, RunState, TenantState, Tier, Workflows};

/// How a tier change request ended.
#[derive(Debug)]
pub enum Changed {
    /// The change started now.
    Started(Tenant),
    /// The tenant has that tier already, or is being moved to it: nothing changed.
    Already(Tenant),
    NotFound,
    /// Only an active tenant changes tier.
    NotActive(TenantState),
    /// Another change of the tenant is under way (a tier change to another tier, a stack update).
    Busy(String),
    /// No workflow moves a tenant between these tiers.
    NoWorkflow(Tier, Tier),
    /// The tenant's previous account, closed by a downgrade, still holds its root e-mail (AWS keeps a
    /// closed account, and its e-mail, for 90 days): another account of its own cannot be made yet.
    AccountRetiring {
        account_id: String,
        until: chrono::DateTime<Utc>,
    },
}

/// How long AWS keeps a closed account (and its root e-mail) in the organization.
const CLOSED_ACCOUNT_KEPT: chrono::Duration = chrono::Duration::days(90);

/// Asks for `slug` to move to `tier`. `grace` is how long an account the tenant leaves stays before it
/// is torn down (`VEND_OFFBOARD_GRACE`).
pub async fn change(
    pool: &PgPool,
    workflows: &Workflows,
    slug: &str,
    tier: Tier,
    actor: &str,
    grace: Duration,
) -> Result<Changed, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some(tenant) = db::tenants::lock_by_slug(&mut tx, slug).await? else {
        return Ok(Changed::NotFound);
    };
    let moving_to = tenant
        .resources
        .get(Resource::TierTo.key())
        .and_then(|v| v.as_str())
        .and_then(|t| Tier::parse(t).ok());
    match moving_to {
        Some(t) if t == tier => return Ok(Changed::Already(tenant)),
        Some(t) => {
            return Ok(Changed::Busy(format!(
                "a change to {} is under way; retry it or let it finish first",
                t.as_str()
            )));
        }
        None if tenant.tier == tier => return Ok(Changed::Already(tenant)),
        None => {}
    }
    if tenant.state != TenantState::Active {
        return Ok(Changed::NotActive(tenant.state));
    }
    let Some(workflow) = workflows.for_change(tenant.tier, tier) else {
        return Ok(Changed::NoWorkflow(tenant.tier, tier));
    };
    let makes_account = workflow.steps.iter().any(|s| s.kind == "create_account");
    if makes_account && let Some((account_id, until)) = retiring_account(&tenant) {
        return Ok(Changed::AccountRetiring { account_id, until });
    }
    if let Some(run) = db::tenants::current_run(&mut *tx, tenant.id).await?
        && run.state == RunState::Running
    {
        return Ok(Changed::Busy(format!(
            "its {} run is still going; wait for it to finish",
            run.workflow
        )));
    }
    let after = Utc::now()
        + chrono::Duration::from_std(grace).unwrap_or_else(|_| chrono::Duration::days(36_500));
    db::tenants::insert_run(&mut tx, Uuid::now_v7(), tenant.id, workflow).await?;
    db::tenants::merge_resources(
        &mut tx,
        tenant.id,
        &json!({
            (Resource::TierTo.key()): tier.as_str(),
            (Resource::RetireAfter.key()): after.to_rfc3339(),
        }),
    )
    .await?;
    db::history::append(
        &mut *tx,
        tenant.id,
        &NewEntry {
            actor: Some(actor),
            detail: Some(json!({"from": tenant.tier, "to": tier, "workflow": workflow.name})),
            ..NewEntry::new(
                HistoryKind::TierChangeRequested,
                &format!(
                    "tier change {} → {} requested ({} workflow)",
                    tenant.tier.as_str(),
                    tier.as_str(),
                    workflow.name
                ),
            )
        },
    )
    .await?;
    db::notify(&mut tx, db::STEPS_CHANNEL).await?;
    let fresh = db::tenants::by_id_locked(&mut tx, tenant.id).await?;
    tx.commit().await?;
    Ok(Changed::Started(fresh))
}

/// The last account the tenant left by a downgrade, while AWS still keeps it (and its e-mail).
fn retiring_account(tenant: &Tenant) -> Option<(String, chrono::DateTime<Utc>)> {
    let last = tenant
        .resources
        .get(Resource::RetiredAccounts.key())?
        .as_array()?
        .last()?;
    let closed = chrono::DateTime::parse_from_rfc3339(last["closed_at"].as_str()?).ok()?;
    let until = closed.with_timezone(&Utc) + CLOSED_ACCOUNT_KEPT;
    (until > Utc::now()).then(|| (last["account_id"].as_str().unwrap_or("").to_owned(), until))
}

/// The tenant's tier switches to the one its change is moving it to (its `tier_to`), with the history
/// entry and `tenant.tier.changed`, in one transaction. Nothing to switch (done already): `false`.
pub async fn switch(
    pool: &PgPool,
    workflows: &Workflows,
    tenant_id: Uuid,
) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let tenant = db::tenants::by_id_locked(&mut tx, tenant_id).await?;
    let Some(to) = tenant
        .resources
        .get(Resource::TierTo.key())
        .and_then(|v| v.as_str())
        .and_then(|t| Tier::parse(t).ok())
    else {
        return Ok(false);
    };
    let from = tenant.tier;
    let workflow = workflows.for_tier(to).name.clone();
    db::tenants::set_tier(&mut tx, tenant_id, to, &workflow).await?;
    db::history::append(
        &mut *tx,
        tenant_id,
        &NewEntry {
            detail: Some(json!({"from": from, "to": to})),
            ..NewEntry::new(
                HistoryKind::TierSwitched,
                &format!(
                    "tier {} → {}: served by the {workflow} workflow's home now",
                    from.as_str(),
                    to.as_str()
                ),
            )
        },
    )
    .await?;
    let fresh = db::tenants::by_id_locked(&mut tx, tenant_id).await?;
    let payload = events::payload(
        &fresh.for_event(),
        None,
        json!({"tier": {"from": from, "to": to}}),
    );
    db::outbox::insert_event(&mut tx, tenant_id, EventType::TierChanged, &payload).await?;
    db::notify(&mut tx, db::OUTBOX_CHANNEL).await?;
    tx.commit().await?;
    Ok(true)
}
