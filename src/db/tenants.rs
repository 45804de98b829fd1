//! Tenants, their runs, and signup idempotency.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, PgPool};
use uuid::Uuid;

use crate::domain::{
    DeliveryState, Resource, Resources, RunState, StepState, TenantState, Tier, Workflow,
};

use super::decode;

#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub owner_email: String,
    pub tier: Tier,
    pub workflow: String,
    pub state: TenantState,
    pub resources: Value,
    pub signup_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Tenant {
    pub fn account_id(&self) -> Option<&str> {
        self.resource(Resource::AccountId)
    }

    pub fn endpoint(&self) -> Option<&str> {
        self.resource(Resource::Endpoint)
    }

    pub fn region(&self) -> Option<&str> {
        self.resource(Resource::Region)
    }

    /// One string entry of the tenant's resources.
    pub fn resource(&self, r: Resource) -> Option<&str> {
        self.resources.get(r.key()).and_then(Value::as_str)
    }

    /// The entries views show, typed.
    pub fn known_resources(&self) -> Resources {
        Resources::from_json(&self.resources)
    }

    /// The tenant as events show it.
    pub fn for_event(&self) -> crate::domain::events::EventTenant<'_> {
        crate::domain::events::EventTenant {
            slug: &self.slug,
            name: &self.name,
            owner_email: &self.owner_email,
            tier: self.tier,
            state: self.state,
            account_id: self.account_id(),
            endpoint: self.endpoint(),
            region: self.region(),
        }
    }
}

struct TenantRecord {
    id: Uuid,
    slug: String,
    name: String,
    owner_email: String,
    tier: String,
    workflow: String,
    state: String,
    resources: Value,
    signup_id: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<TenantRecord> for Tenant {
    type Error = sqlx::Error;
    fn try_from(r: TenantRecord) -> Result<Self, sqlx::Error> {
        Ok(Tenant {
            tier: decode("tenants.tier", &r.tier, |s| Tier::parse(s).ok())?,
            state: decode("tenants.state", &r.state, TenantState::parse)?,
            id: r.id,
            slug: r.slug,
            name: r.name,
            owner_email: r.owner_email,
            workflow: r.workflow,
            resources: r.resources,
            signup_id: r.signup_id,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

/// A stored answer to a signup webhook, replayed verbatim for the same `webhook-id`.
#[derive(Debug, Clone)]
pub struct StoredAnswer {
    pub status: u16,
    pub response: Value,
}

pub async fn find_signup_answer(
    db: impl PgExecutor<'_>,
    webhook_id: &str,
) -> Result<Option<StoredAnswer>, sqlx::Error> {
    let row = sqlx::query!(
        "SELECT status, response FROM signup_requests WHERE webhook_id = $1",
        webhook_id
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| StoredAnswer {
        status: r.status as u16,
        response: r.response,
    }))
}

/// Stores the answer to an inbound webhook unless one is stored for its id already.
pub async fn store_answer(
    db: impl PgExecutor<'_>,
    webhook_id: &str,
    tenant_id: Uuid,
    answer: &StoredAnswer,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"INSERT INTO signup_requests (webhook_id, tenant_id, status, response)
           VALUES ($1, $2, $3, $4) ON CONFLICT (webhook_id) DO NOTHING"#,
        webhook_id,
        tenant_id,
        answer.status as i16,
        answer.response,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Everything a signup writes, prepared by the caller so that one statement can write it (or many
/// signups at once: [`insert_signups`]).
#[derive(Debug)]
pub struct NewSignup {
    pub tenant: Tenant,
    pub run_id: Uuid,
    /// The name of the workflow's first step.
    pub first_step: String,
    pub history_kind: &'static str,
    pub history_message: String,
    pub history_detail: Value,
    pub event_id: Uuid,
    pub event_type: &'static str,
    pub event_payload: Value,
    pub answer: StoredAnswer,
}

/// What [`insert_signup`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignupInsert {
    Inserted,
    /// Nothing written: the slug is taken (by this same webhook-id or by another tenant).
    SlugTaken,
    /// Nothing written: the webhook-id already has an answer (it carried another slug).
    WebhookIdTaken,
}

/// Writes a signup whole — tenant, run, its first step (due now), history entry, event with its
/// deliveries, and the stored answer — in one statement, which is one round trip and one commit.
/// A run's later steps get their rows when it reaches them (see [`super::steps`]).
/// The statement writes nothing when the slug is taken, and fails whole when the webhook-id is.
pub async fn insert_signup(
    db: impl PgExecutor<'_>,
    n: &NewSignup,
) -> Result<SignupInsert, sqlx::Error> {
    let t = &n.tenant;
    let r = sqlx::query_scalar!(
        r#"WITH t AS (
               INSERT INTO tenants (id, slug, name, owner_email, tier, workflow, state, signup_id,
                                    created_at, updated_at, resources)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $20)
               ON CONFLICT (slug) DO NOTHING
               RETURNING id
           ), r AS (
               INSERT INTO runs (id, tenant_id, workflow, state)
               SELECT $10, t.id, $6, $21 FROM t
               RETURNING id
           ), s AS (
               INSERT INTO steps (run_id, position, name, state, due_at)
               SELECT r.id, 0, $11, $22, now() FROM r
           ), h AS (
               INSERT INTO history (tenant_id, kind, actor, message, detail)
               SELECT t.id, $12, 'signup', $13, $14 FROM t
           ), e AS (
               INSERT INTO events (id, tenant_id, type, payload)
               SELECT $15, t.id, $16, $17 FROM t
               RETURNING id
           ), d AS (
               INSERT INTO deliveries (event_id, endpoint_id, state, due_at)
               SELECT e.id, ep.id, $23, now() FROM e, endpoints ep WHERE ep.disabled_at IS NULL
           ), a AS (
               INSERT INTO signup_requests (webhook_id, tenant_id, status, response)
               SELECT $8, t.id, $18, $19 FROM t
           )
           SELECT count(*) AS "inserted!" FROM t"#,
        t.id,
        t.slug,
        t.name,
        t.owner_email,
        t.tier.as_str(),
        t.workflow,
        t.state.as_str(),
        t.signup_id,
        t.created_at,
        n.run_id,
        n.first_step,
        n.history_kind,
        n.history_message,
        n.history_detail,
        n.event_id,
        n.event_type,
        n.event_payload,
        n.answer.status as i16,
        n.answer.response,
        t.resources,
        RunState::Running.as_str(),
        StepState::Pending.as_str(),
        DeliveryState::Pending.as_str(),
    )
    .fetch_one(db)
    .await;
    match r {
        Ok(1) => Ok(SignupInsert::Inserted),
        Ok(_) => Ok(SignupInsert::SlugTaken),
        Err(e) if is_webhook_id_conflict(&e) => Ok(SignupInsert::WebhookIdTaken),
        Err(e) => Err(e),
    }
}

fn is_webhook_id_conflict(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.constraint() == Some("signup_requests_pkey"))
}

/// [`insert_signup`] for many signups in one statement (the intake's group commit): one round trip
/// and one commit for all of them. Returns one outcome per signup, in order. A signup whose slug is
/// taken (by an earlier signup, or by one before it in `signups`) writes nothing, as alone; a
/// webhook-id that already has an answer fails the whole statement, so then each signup is written
/// on its own (rare: it takes a reused webhook-id carrying another slug).
pub async fn insert_signups(
    pool: &PgPool,
    signups: &[NewSignup],
) -> Result<Vec<SignupInsert>, sqlx::Error> {
    // A lone signup (most of them, below a few hundred a second) takes the one-row statement: the
    // same rows, but measured at 10-20 % less Postgres CPU than unnesting arrays of one.
    if let [one] = signups {
        return Ok(vec![insert_signup(pool, one).await?]);
    }
    let column = |f: fn(&NewSignup) -> String| signups.iter().map(f).collect::<Vec<_>>();
    let json = |f: fn(&NewSignup) -> &Value| signups.iter().map(f).cloned().collect::<Vec<_>>();
    let uuids = |f: fn(&NewSignup) -> Uuid| signups.iter().map(f).collect::<Vec<_>>();
    let r = sqlx::query_scalar!(
        r#"WITH i AS (
               SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[],
                                    $6::text[], $7::text[], $8::text[], $9::timestamptz[],
                                    $10::jsonb[], $11::uuid[], $12::text[], $13::text[], $14::text[],
                                    $15::jsonb[], $16::uuid[], $17::text[], $18::jsonb[], $19::int2[],
                                    $20::jsonb[], $21::int4[])
                   AS i(id, slug, name, owner_email, tier, workflow, state, signup_id, created_at,
                        resources, run_id, first_step, history_kind, history_message, history_detail,
                        event_id, event_type, event_payload, status, response, ord)
           ), t AS (
               INSERT INTO tenants (id, slug, name, owner_email, tier, workflow, state, signup_id,
                                    created_at, updated_at, resources)
               SELECT id, slug, name, owner_email, tier, workflow, state, signup_id, created_at,
                      created_at, resources
               FROM i ORDER BY ord
               ON CONFLICT (slug) DO NOTHING
               RETURNING id
           ), n AS (
               SELECT i.* FROM i JOIN t USING (id)
           ), r AS (
               INSERT INTO runs (id, tenant_id, workflow, state)
               SELECT run_id, id, workflow, $22 FROM n
           ), s AS (
               INSERT INTO steps (run_id, position, name, state, due_at)
               SELECT run_id, 0, first_step, $23, now() FROM n
           ), h AS (
               INSERT INTO history (tenant_id, kind, actor, message, detail)
               SELECT id, history_kind, 'signup', history_message, history_detail FROM n
           ), e AS (
               INSERT INTO events (id, tenant_id, type, payload)
               SELECT event_id, id, event_type, event_payload FROM n
               RETURNING id
           ), d AS (
               INSERT INTO deliveries (event_id, endpoint_id, state, due_at)
               SELECT e.id, ep.id, $24, now() FROM e, endpoints ep WHERE ep.disabled_at IS NULL
           ), a AS (
               INSERT INTO signup_requests (webhook_id, tenant_id, status, response)
               SELECT signup_id, id, status, response FROM n
           )
           SELECT id AS "id!" FROM t"#,
        &uuids(|n| n.tenant.id),
        &column(|n| n.tenant.slug.clone()),
        &column(|n| n.tenant.name.clone()),
        &column(|n| n.tenant.owner_email.clone()),
        &column(|n| n.tenant.tier.as_str().to_owned()),
        &column(|n| n.tenant.workflow.clone()),
        &column(|n| n.tenant.state.as_str().to_owned()),
        &column(|n| n.tenant.signup_id.clone()),
        &signups
            .iter()
            .map(|n| n.tenant.created_at)
            .collect::<Vec<_>>(),
        &json(|n| &n.tenant.resources),
        &uuids(|n| n.run_id),
        &column(|n| n.first_step.clone()),
        &column(|n| n.history_kind.to_owned()),
        &column(|n| n.history_message.clone()),
        &json(|n| &n.history_detail),
        &uuids(|n| n.event_id),
        &column(|n| n.event_type.to_owned()),
        &json(|n| &n.event_payload),
        &signups
            .iter()
            .map(|n| n.answer.status as i16)
            .collect::<Vec<_>>(),
        &json(|n| &n.answer.response),
        &(0..signups.len() as i32).collect::<Vec<_>>(),
        RunState::Running.as_str(),
        StepState::Pending.as_str(),
        DeliveryState::Pending.as_str(),
    )
    .fetch_all(pool)
    .await;
    match r {
        Ok(inserted) => Ok(signups
            .iter()
            .map(|n| {
                if inserted.contains(&n.tenant.id) {
                    SignupInsert::Inserted
                } else {
                    SignupInsert::SlugTaken
                }
            })
            .collect()),
        Err(e) if is_webhook_id_conflict(&e) => {
            let mut outcomes = Vec::with_capacity(signups.len());
            for n in signups {
                outcomes.push(insert_signup(pool, n).await?);
            }
            Ok(outcomes)
        }
        Err(e) => Err(e),
    }
}

pub async fn by_slug(db: impl PgExecutor<'_>, slug: &str) -> Result<Option<Tenant>, sqlx::Error> {
    sqlx::query_as!(
        TenantRecord,
        r#"SELECT id, slug, name, owner_email, tier, workflow, state, resources, signup_id,
                  created_at, updated_at
           FROM tenants WHERE slug = $1"#,
        slug
    )
    .fetch_optional(db)
    .await?
    .map(Tenant::try_from)
    .transpose()
}

/// The tenant as this connection sees it now (within a transaction: with its own writes).
pub async fn by_id_locked(conn: &mut PgConnection, id: Uuid) -> Result<Tenant, sqlx::Error> {
    sqlx::query_as!(
        TenantRecord,
        r#"SELECT id, slug, name, owner_email, tier, workflow, state, resources, signup_id,
                  created_at, updated_at
           FROM tenants WHERE id = $1 FOR UPDATE"#,
        id
    )
    .fetch_one(conn)
    .await
    .and_then(Tenant::try_from)
}

/// Locks the tenant row for the rest of the transaction (operator actions serialize on it).
pub async fn lock_by_slug(
    conn: &mut PgConnection,
    slug: &str,
) -> Result<Option<Tenant>, sqlx::Error> {
    sqlx::query_as!(
        TenantRecord,
        r#"SELECT id, slug, name, owner_email, tier, workflow, state, resources, signup_id,
                  created_at, updated_at
           FROM tenants WHERE slug = $1 FOR UPDATE"#,
        slug
    )
    .fetch_optional(conn)
    .await?
    .map(Tenant::try_from)
    .transpose()
}

/// What a tenants listing may be narrowed to; every field set must hold.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub state: Option<TenantState>,
    pub tier: Option<Tier>,
    /// The current step (in flight or failed) has this name.
    pub step: Option<String>,
    /// The current step's last error has this code.
    pub error_code: Option<String>,
    /// The current step started longer ago than this.
    pub in_step_longer_than: Option<std::time::Duration>,
    /// The current step has failed (the bulk retry's set).
    pub step_failed: bool,
}

impl ListFilter {
    /// Whether the filter is about the current step: then only tenants with one are listed.
    fn on_current_step(&self) -> bool {
        self.step.is_some()
            || self.error_code.is_some()
            || self.in_step_longer_than.is_some()
            || self.step_failed
    }
}

/// One tenant of a listing, with the cursor that resumes the listing after it.
#[derive(Debug, Clone)]
pub struct Listed {
    pub tenant: Tenant,
    pub cursor: Uuid,
    /// In a listing filtered by the current step: that step.
    pub current: Option<CurrentStep>,
}

#[derive(Debug, Clone)]
pub struct CurrentStep {
    pub name: String,
    pub error_code: Option<String>,
}

struct CurrentStepRecord {
    id: Uuid,
    slug: String,
    name: String,
    owner_email: String,
    tier: String,
    workflow: String,
    state: String,
    resources: Value,
    signup_id: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    run_id: Uuid,
    step_name: String,
    error_code: Option<String>,
}

/// A page of tenants. `before` is the cursor of the last tenant of the previous page.
///
/// Unfiltered by the current step, newest tenant first; the cursor is the tenant's id (UUIDv7).
/// Filtered by it, newest current run first; the cursor is that run's id. A current step is a row
/// that is in flight (it has a due time) or failed; each filter walks a partial index of those rows
/// already in cursor order (`steps_current_name` for a step name, `steps_current_error` for an error
/// code, which is the more selective when both are given, `steps_current` otherwise) and stops at
/// `limit`, so a page costs about `limit` rows read
/// whatever the fleet's size. The three walks are one statement: two of them are switched off by
/// one-time filters on the parameters, and the `'failed'` literal is what lets the planner prove the
/// partial indexes apply. Filters on the tenant (state, tier) are checked on the rows the walk
/// finds, so a rare combination of both kinds costs the step filter's matches, not a page.
pub async fn list(
    pool: &PgPool,
    filter: &ListFilter,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Listed>, sqlx::Error> {
    // UUIDv7 ids never reach the all-ones uuid: it stands for "from the newest".
    let before = before.unwrap_or(Uuid::max());
    if filter.on_current_step() {
        // A step that started before the cutoff belongs to a run made before it: skip the newer
        // runs without reading them (with ten minutes' room for replicas' clocks).
        let before = match filter.in_step_longer_than {
            Some(d) => chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| Utc::now().checked_sub_signed(d - chrono::Duration::minutes(10)))
                .map_or(Uuid::nil(), |cutoff| before.min(uuid_v7_floor(cutoff))),
            None => before,
        };
        // The generic plan of a prepared statement cannot know how many steps a name has, and
        // costs a bitmap scan and a sort of all of them below the walk in order that stops at a
        // page (measured at 1,000,000 tenants: 10-35 ms against 1 ms). Only this statement is
        // told not to.
        let mut tx = pool.begin().await?;
        sqlx::query!("SET LOCAL enable_bitmapscan = off")
            .execute(&mut *tx)
            .await?;
        let recs = sqlx::query_as!(
            CurrentStepRecord,
            r#"SELECT t.id, t.slug, t.name, t.owner_email, t.tier, t.workflow, t.state, t.resources,
                      t.signup_id, t.created_at, t.updated_at, cur.run_id AS "run_id!",
                      cur.name AS "step_name!", cur.last_error_code AS error_code
               FROM (
                   (SELECT run_id, name, state, last_error_code,
                           coalesce(started_at, updated_at) AS since
                    FROM steps
                    WHERE $5::text IS NOT NULL AND last_error_code = $5
                      AND last_error_code IS NOT NULL
                      AND (due_at IS NOT NULL OR state = 'failed') AND run_id < $1
                    ORDER BY run_id DESC)
                   UNION ALL
                   (SELECT run_id, name, state, last_error_code, coalesce(started_at, updated_at)
                    FROM steps
                    WHERE $5::text IS NULL AND $4::text IS NOT NULL AND name = $4
                      AND (due_at IS NOT NULL OR state = 'failed') AND run_id < $1
                    ORDER BY run_id DESC)
                   UNION ALL
                   (SELECT run_id, name, state, last_error_code, coalesce(started_at, updated_at)
                    FROM steps
                    WHERE $5::text IS NULL AND $4::text IS NULL
                      AND (due_at IS NOT NULL OR state = 'failed') AND run_id < $1
                    ORDER BY run_id DESC)
               ) cur
               JOIN runs r ON r.id = cur.run_id
               JOIN tenants t ON t.id = r.tenant_id
               WHERE r.state <> $8
                 AND ($2::text IS NULL OR t.state = $2) AND ($3::text IS NULL OR t.tier = $3)
                 AND ($4::text IS NULL OR cur.name = $4)
                 AND ($6::float8 IS NULL OR cur.since < now() - make_interval(secs => $6))
                 AND (NOT $9 OR cur.state = 'failed')
               ORDER BY cur.run_id DESC
               LIMIT $7"#,
            before,
            filter.state.map(TenantState::as_str),
            filter.tier.map(Tier::as_str),
            filter.step.as_deref(),
            filter.error_code.as_deref(),
            filter.in_step_longer_than.map(|d| d.as_secs_f64()),
            limit,
            RunState::Cancelled.as_str(),
            filter.step_failed,
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        return recs
            .into_iter()
            .map(|r| {
                let cursor = r.run_id;
                let current = Some(CurrentStep {
                    name: r.step_name,
                    error_code: r.error_code,
                });
                let tenant = Tenant::try_from(TenantRecord {
                    id: r.id,
                    slug: r.slug,
                    name: r.name,
                    owner_email: r.owner_email,
                    tier: r.tier,
                    workflow: r.workflow,
                    state: r.state,
                    resources: r.resources,
                    signup_id: r.signup_id,
                    created_at: r.created_at,
                    updated_at: r.updated_at,
                })?;
                Ok(Listed {
                    tenant,
                    cursor,
                    current,
                })
            })
            .collect();
    }
    // Two statements rather than one with `$1 IS NULL OR ...`: a prepared statement gets a generic
    // plan, and only the filtered form can walk the `(state, id)` index.
    let tier = filter.tier.map(Tier::as_str);
    let recs =
        match filter.state {
            Some(state) => sqlx::query_as!(
                TenantRecord,
                r#"SELECT id, slug, name, owner_email, tier, workflow, state, resources, signup_id,
                          created_at, updated_at
                   FROM tenants
                   WHERE state = $1 AND id < $2 AND ($4::text IS NULL OR tier = $4)
                   ORDER BY id DESC
                   LIMIT $3"#,
                state.as_str(),
                before,
                limit,
                tier,
            )
            .fetch_all(pool)
            .await?,
            None => sqlx::query_as!(
                TenantRecord,
                r#"SELECT id, slug, name, owner_email, tier, workflow, state, resources, signup_id,
                          created_at, updated_at
                   FROM tenants
                   WHERE id < $1 AND ($3::text IS NULL OR tier = $3)
                   ORDER BY id DESC
                   LIMIT $2"#,
                before,
                limit,
                tier,
            )
            .fetch_all(pool)
            .await?,
        };
    recs.into_iter()
        .map(|r| {
            let tenant = Tenant::try_from(r)?;
            Ok(Listed {
                cursor: tenant.id,
                tenant,
                current: None,
            })
        })
        .collect()
}

/// The smallest UUIDv7 of the millisecond `at`: every id made at or after `at` sorts above it.
fn uuid_v7_floor(at: DateTime<Utc>) -> Uuid {
    let ms = at.timestamp_millis().max(0) as u64;
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    Uuid::from_bytes(bytes)
}

pub async fn set_state(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    state: TenantState,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE tenants SET state = $2, updated_at = now() WHERE id = $1",
        tenant_id,
        state.as_str()
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// The tenant's tier switches to `tier`, served by `workflow` from now on, and the tier change it was
/// in (`tier_to`) is over.
pub async fn set_tier(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    tier: Tier,
    workflow: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE tenants SET tier = $2, workflow = $3, resources = resources - 'tier_to', updated_at = now()
         WHERE id = $1",
        tenant_id,
        tier.as_str(),
        workflow
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Merges `patch` into the tenant's resources (external ids); keys in `patch` win.
pub async fn merge_resources(
    conn: &mut PgConnection,
    tenant_id: Uuid,
    patch: &Value,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE tenants SET resources = resources || $2, updated_at = now() WHERE id = $1",
        tenant_id,
        patch
    )
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct Run {
    pub id: Uuid,
    pub workflow: String,
    pub state: RunState,
}

struct RunRecord {
    id: Uuid,
    workflow: String,
    state: String,
}

impl TryFrom<RunRecord> for Run {
    type Error = sqlx::Error;
    fn try_from(r: RunRecord) -> Result<Self, sqlx::Error> {
        Ok(Run {
            state: decode("runs.state", &r.state, RunState::parse)?,
            id: r.id,
            workflow: r.workflow,
        })
    }
}

/// The tenant's current run: its latest one that was not cancelled.
pub async fn current_run(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
) -> Result<Option<Run>, sqlx::Error> {
    sqlx::query_as!(
        RunRecord,
        r#"SELECT id, workflow, state FROM runs WHERE tenant_id = $1 AND state <> $2
           ORDER BY created_at DESC LIMIT 1"#,
        tenant_id,
        RunState::Cancelled.as_str()
    )
    .fetch_optional(db)
    .await?
    .map(Run::try_from)
    .transpose()
}

/// The tenant's latest run of one of `workflows`, whatever its state.
pub async fn latest_run_of(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
    workflows: &[String],
) -> Result<Option<Run>, sqlx::Error> {
    sqlx::query_as!(
        RunRecord,
        r#"SELECT id, workflow, state FROM runs WHERE tenant_id = $1 AND workflow = ANY($2)
           ORDER BY created_at DESC LIMIT 1"#,
        tenant_id,
        workflows
    )
    .fetch_optional(db)
    .await?
    .map(Run::try_from)
    .transpose()
}

/// Starts a run of `workflow` for the tenant with its first step due now (later steps get their rows
/// when the run reaches them).
pub async fn insert_run(
    conn: &mut PgConnection,
    run_id: Uuid,
    tenant_id: Uuid,
    workflow: &Workflow,
) -> Result<(), sqlx::Error> {
    let first = workflow
        .steps
        .first()
        .map(|s| s.name.as_str())
        .ok_or_else(|| sqlx::Error::Protocol(format!("workflow {} has no steps", workflow.name)))?;
    sqlx::query!(
        r#"WITH run AS (
               INSERT INTO runs (id, tenant_id, workflow, state) VALUES ($1, $2, $3, $5)
               RETURNING id
           )
           INSERT INTO steps (run_id, position, name, state, due_at)
           SELECT run.id, 0, $4, $6, now() FROM run"#,
        run_id,
        tenant_id,
        workflow.name,
        first,
        RunState::Running.as_str(),
        StepState::Pending.as_str(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Cancels a run: none of its steps is due any more, and clearing their lease tokens fences out a
/// worker still running one (its outcome and resource writes are refused). Returns when the lease of
/// the step that was running ends, if one was: until then its worker may still be inside an AWS call.
pub async fn cancel_run(
    conn: &mut PgConnection,
    run_id: Uuid,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar!(
        r#"WITH run AS (
               UPDATE runs SET state = $2, updated_at = now() WHERE id = $1
           ), old AS (
               SELECT position, state, due_at FROM steps
               WHERE run_id = $1 AND state IN ($3, $4, $5)
               FOR UPDATE
           ), cancelled AS (
               UPDATE steps s SET state = $3, due_at = NULL, wait_reason = NULL,
                      lease_owner = NULL, lease_token = NULL, updated_at = now()
               FROM old WHERE s.run_id = $1 AND s.position = old.position
           )
           SELECT max(due_at) FILTER (WHERE state = $5) AS "lease_ends" FROM old"#,
        run_id,
        RunState::Cancelled.as_str(),
        StepState::Pending.as_str(),
        StepState::Waiting.as_str(),
        StepState::Running.as_str(),
    )
    .fetch_one(conn)
    .await
}

pub async fn set_run_state(
    conn: &mut PgConnection,
    run_id: Uuid,
    state: RunState,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE runs SET state = $2, updated_at = now() WHERE id = $1",
        run_id,
        state.as_str()
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Tenants per state (metrics, the console): the folded counts plus the deltas not yet folded, read
/// in one snapshot, so exact and independent of the fleet's size.
pub async fn count_by_state(db: impl PgExecutor<'_>) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT state AS "state!", sum(n)::bigint AS "n!"
           FROM (SELECT state, n FROM tenant_counts
                 UNION ALL SELECT state, delta::bigint FROM tenant_count_deltas) c
           GROUP BY state"#
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.state, r.n)).collect())
}

const COUNTS_LOCK: i64 = 0x7665_6e64_636e_7401; // "vend" "cnt" + 1

/// Folds the per-change deltas the `tenants` trigger appends into `tenant_counts`, so that reading
/// the counts stays cheap. One replica at a time (the others skip); returns the deltas folded.
pub async fn fold_counts(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mine: bool = sqlx::query_scalar!(
        r#"SELECT pg_try_advisory_xact_lock($1) AS "locked!""#,
        COUNTS_LOCK
    )
    .fetch_one(&mut *tx)
    .await?;
    if !mine {
        return Ok(0);
    }
    let folded = sqlx::query_scalar!(
        r#"WITH d AS (DELETE FROM tenant_count_deltas RETURNING state, delta),
                s AS (SELECT state, sum(delta)::bigint AS n, count(*) AS rows FROM d GROUP BY state),
                u AS (INSERT INTO tenant_counts (state, n) SELECT state, n FROM s
                      ON CONFLICT (state) DO UPDATE SET n = tenant_counts.n + excluded.n)
           SELECT coalesce(sum(rows), 0)::bigint AS "rows!" FROM s"#
    )
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(folded as u64)
}
