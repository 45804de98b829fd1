//! Offboarding and restoring a tenant. An offboard starts a run of the offboard workflow (endpoint
//! dark, grace period, teardown, CloseAccount within its quota) and cancels the provisioning run it
//! interrupts; a restore, allowed while the grace period lasts and nothing is deleted yet, cancels
//! the offboard run and brings the tenant's home back.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::db;
use crate::db::history::NewEntry;
use crate::db::tenants::Tenant;
use crate::domain::events;
use crate::domain::{EventType, HistoryKind, Purpose, RunState, StepState, TenantState, Workflows};

/// The resource keys an offboard writes; a restore clears them.
pub const OFFBOARD_AFTER: &str = crate::domain::Resource::OffboardAfter.key();
const OFFBOARD_REASON: &str = crate::domain::Resource::OffboardReason.key();
/// When the lease of a provisioning step that was running at the offboard ends: teardown starts no
/// earlier, so that step's last AWS call cannot land after it (a stack created after its deletion).
pub const QUIESCE_UNTIL: &str = crate::domain::Resource::OffboardQuiesceUntil.key();
/// The step kind whose success ends the grace period: past it, things are deleted.
pub const GRACE_KIND: &str = "grace_period";
/// The provisioning step kinds a restore re-runs to light the endpoint again (the silo's, the pool's).
const RELIGHT_KINDS: [&str; 2] = ["map_domain", "route_domain"];

/// How an offboard request ended.
#[derive(Debug)]
pub enum Offboarded {
    /// Offboarding started now.
    Started(Tenant),
    /// It was already offboarding: nothing changed.
    Already(Tenant),
    NotFound,
    /// The tenant is closed: there is nothing left to offboard.
    Closed,
    /// No offboard workflow is loaded (`workflows/offboard.toml`).
    Unavailable,
}

/// How a restore request ended.
#[derive(Debug)]
pub enum Restored {
    Done(Tenant),
    NotFound,
    /// The tenant is not offboarding.
    NotOffboarding(TenantState),
    /// The grace period is over (or teardown has begun): the tenant can no longer come back.
    TooLate(Option<DateTime<Utc>>),
    /// An offboard step is running this moment; try again when it has finished.
    Busy(String),
}

/// Starts offboarding the tenant `slug`, restorable for `grace`. `actor` is who asked (an operator
/// token's name, or `webhook`).
pub async fn offboard(
    pool: &PgPool,
    workflows: &Workflows,
    slug: &str,
    reason: &str,
    actor: &str,
    grace: Duration,
) -> Result<Offboarded, sqlx::Error> {
    let Some(workflow) = workflows.offboard() else {
        return Ok(Offboarded::Unavailable);
    };
    let mut tx = pool.begin().await?;
    let Some(tenant) = db::tenants::lock_by_slug(&mut tx, slug).await? else {
        return Ok(Offboarded::NotFound);
    };
    match tenant.state {
        TenantState::Closed => return Ok(Offboarded::Closed),
        TenantState::Offboarding => return Ok(Offboarded::Already(tenant)),
        _ => {}
    }
    let from = tenant.state;
    // One run changes a tenant's infrastructure at a time: the provisioning run stops here, and the
    // offboard steps tear down whatever it got to make.
    let mut quiesce = None;
    if let Some(run) = db::tenants::current_run(&mut *tx, tenant.id).await?
        && run.state == RunState::Running
    {
        quiesce = db::tenants::cancel_run(&mut tx, run.id).await?;
        db::history::append(
            &mut *tx,
            tenant.id,
            &NewEntry {
                actor: Some(actor),
                detail: Some(json!({"workflow": run.workflow})),
                ..NewEntry::new(
                    HistoryKind::RunCancelled,
                    &format!("{} run cancelled by offboarding", run.workflow),
                )
            },
        )
        .await?;
    }
    let after = Utc::now()
        + chrono::Duration::from_std(grace).unwrap_or_else(|_| chrono::Duration::days(36_500));
    db::tenants::insert_run(&mut tx, Uuid::now_v7(), tenant.id, workflow).await?;
    db::tenants::merge_resources(
        &mut tx,
        tenant.id,
        &json!({
            OFFBOARD_AFTER: after.to_rfc3339(),
            OFFBOARD_REASON: reason,
            QUIESCE_UNTIL: quiesce.map(|q| q.to_rfc3339()),
        }),
    )
    .await?;
    let tenant = transition(
        &mut tx,
        &tenant,
        TenantState::Offboarding,
        actor,
        HistoryKind::TenantOffboarding,
        &format!(
            "offboarding requested ({reason}); {} → offboarding, restorable until {}",
            from.as_str(),
            after.to_rfc3339()
        ),
        EventType::TenantOffboarding,
        json!({"reason": reason, "restorable_until": after}),
    )
    .await?;
    db::notify(&mut tx, db::STEPS_CHANNEL).await?;
    db::notify(&mut tx, db::OUTBOX_CHANNEL).await?;
    tx.commit().await?;
    Ok(Offboarded::Started(tenant))
}

/// Brings an offboarding tenant back while its grace period lasts.
pub async fn restore(
    pool: &PgPool,
    workflows: &Workflows,
    slug: &str,
    actor: &str,
) -> Result<Restored, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let Some(tenant) = db::tenants::lock_by_slug(&mut tx, slug).await? else {
        return Ok(Restored::NotFound);
    };
    if tenant.state != TenantState::Offboarding {
        return Ok(Restored::NotOffboarding(tenant.state));
    }
    let deadline = tenant
        .resources
        .get(OFFBOARD_AFTER)
        .and_then(Value::as_str)
        .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&Utc));
    let Some(run) = db::tenants::current_run(&mut *tx, tenant.id).await? else {
        return Ok(Restored::TooLate(deadline));
    };
    let offboard = workflows.get(&run.workflow);
    let Some(grace_at) = offboard.and_then(|w| w.steps.iter().position(|s| s.kind == GRACE_KIND))
    else {
        return Ok(Restored::TooLate(deadline));
    };
    let steps = db::steps::lock_for_run(&mut tx, run.id).await?;
    let now = Utc::now();
    if let Some(s) = steps
        .iter()
        .find(|s| s.state == StepState::Running && s.due_at.is_some_and(|d| d > now))
    {
        // Darkening the endpoint right now: restoring meanwhile could race it.
        return Ok(Restored::Busy(s.name.clone()));
    }
    let teardown_started = steps.iter().any(|s| {
        s.position as usize > grace_at && (s.state != StepState::Pending || s.due_at.is_some())
    }) || steps
        .iter()
        .any(|s| s.position as usize == grace_at && s.state == StepState::Succeeded);
    if teardown_started || deadline.is_none_or(|d| d <= Utc::now()) {
        return Ok(Restored::TooLate(deadline));
    }
    db::tenants::cancel_run(&mut tx, run.id).await?;
    db::tenants::merge_resources(
        &mut tx,
        tenant.id,
        &json!({OFFBOARD_AFTER: Value::Null, OFFBOARD_REASON: Value::Null, QUIESCE_UNTIL: Value::Null}),
    )
    .await?;
    // The tenant's home: its latest run that built it (provisioning, or a tier change), finished or
    // interrupted.
    let homes: Vec<String> = workflows
        .all()
        .filter(|w| matches!(w.purpose, Purpose::Provision | Purpose::Tier))
        .map(|w| w.name.clone())
        .collect();
    let home = db::tenants::latest_run_of(&mut *tx, tenant.id, &homes).await?;
    let to = match home {
        Some(home) => {
            let workflow = workflows.get(&home.workflow);
            let relight = workflow.and_then(|w| {
                w.steps
                    .iter()
                    .position(|s| RELIGHT_KINDS.contains(&s.kind.as_str()))
            });
            let steps = db::steps::lock_for_run(&mut tx, home.id).await?;
            let unfinished = steps
                .iter()
                .find(|s| s.state != StepState::Succeeded)
                .map(|s| s.position);
            let whole = home.state == RunState::Succeeded || unfinished.is_none();
            match (relight, unfinished) {
                // Its record was made (the endpoint was only made dark): light it again from there,
                // and go on with whatever came after.
                (Some(pos), u) if whole || u.is_some_and(|u| u as usize > pos) => {
                    db::steps::rewind(&mut tx, home.id, pos as i32).await?;
                    db::tenants::set_run_state(&mut tx, home.id, RunState::Running).await?;
                }
                // Interrupted before its record: go on from its first step that has not succeeded.
                (_, Some(u)) => {
                    db::steps::reset_failed(&mut tx, home.id, u).await?;
                    db::tenants::set_run_state(&mut tx, home.id, RunState::Running).await?;
                }
                // Nothing left to run and nothing to light (a workflow without a record step).
                _ => {}
            }
            let provisioning = workflow.is_none_or(|w| w.purpose == Purpose::Provision);
            if provisioning && !whole {
                TenantState::Provisioning
            } else {
                // A tier change keeps the tenant active wherever it stopped.
                TenantState::Active
            }
        }
        None => TenantState::Pending,
    };
    let tenant = transition(
        &mut tx,
        &tenant,
        to,
        actor,
        HistoryKind::TenantRestored,
        &format!("restored; offboarding → {}", to.as_str()),
        EventType::TenantRestored,
        json!({}),
    )
    .await?;
    db::notify(&mut tx, db::STEPS_CHANNEL).await?;
    db::notify(&mut tx, db::OUTBOX_CHANNEL).await?;
    tx.commit().await?;
    Ok(Restored::Done(tenant))
}

/// Sets the tenant's state and writes the history entry and the event that say so.
#[allow(clippy::too_many_arguments)]
async fn transition(
    conn: &mut PgConnection,
    tenant: &Tenant,
    to: TenantState,
    actor: &str,
    kind: HistoryKind,
    message: &str,
    event: EventType,
    detail: Value,
) -> Result<Tenant, sqlx::Error> {
    db::tenants::set_state(conn, tenant.id, to).await?;
    db::history::append(
        &mut *conn,
        tenant.id,
        &NewEntry {
            actor: Some(actor),
            detail: Some(detail.clone()),
            ..NewEntry::new(kind, message)
        },
    )
    .await?;
    let fresh = db::tenants::by_id_locked(conn, tenant.id).await?;
    let payload = events::payload(&fresh.for_event(), None, json!({ "detail": detail }));
    db::outbox::insert_event(conn, tenant.id, event, &payload).await?;
    Ok(fresh)
}
