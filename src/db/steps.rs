//! Steps: claiming due work under a lease, fenced writes of outcomes, and operator rewinds.
//!
//! A claim stamps a fresh fencing token (`lease_token`) and pushes `due_at` to the lease expiry; every
//! later write by that worker names the token, so a worker whose lease was taken over changes nothing.
//!
//! A run has a row for each step it has reached, not for every step of its workflow: the first is
//! written with the run, each next one when the step before it succeeds (already claimed, in the
//! group commit). A signup then writes one step row instead of six; the views fill in the steps not
//! reached yet from the workflow ([`with_unreached`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::domain::{
    DeliveryState, EventType, HistoryKind, Purpose, RunState, StepState, TenantState, Tier,
    WaitReason, Workflow,
};

use super::decode;

/// A step claimed by a worker, with what the step needs to know about its tenant.
#[derive(Debug, Clone)]
pub struct Claim {
    pub run_id: Uuid,
    pub position: i32,
    pub step: String,
    pub attempts: i32,
    pub throttles: i32,
    pub lease_token: i64,
    pub started_at: DateTime<Utc>,
    /// When the step became due: `now - was_due` is the claim latency.
    pub was_due: DateTime<Utc>,
    /// The previous owner if this claim took over an expired lease (the owner crashed or stalled).
    pub took_over_from: Option<String>,
    pub tenant_id: Uuid,
    pub slug: String,
    pub name: String,
    pub owner_email: String,
    pub tier: Tier,
    pub workflow: String,
    pub resources: Value,
    pub claimed_at: DateTime<Utc>,
}

/// The fencing identity of a claim: every write after the claim checks it.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    pub run_id: Uuid,
    pub position: i32,
    pub token: i64,
}

impl Claim {
    pub fn lease(&self) -> Lease {
        Lease {
            run_id: self.run_id,
            position: self.position,
            token: self.lease_token,
        }
    }
}

/// Claims up to `limit` due steps for `owner`, leasing each for `lease`. One statement: the claim, the
/// tenants' move to `provisioning` and, for a takeover, the history row of the abandoned attempt.
pub async fn claim(
    db: impl PgExecutor<'_>,
    owner: &str,
    limit: i64,
    lease: Duration,
) -> Result<Vec<Claim>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"
        WITH due AS (
            -- Only runnable steps have a due_at (a CHECK constraint), so this is an ordered walk of
            -- steps_due that stops at the limit.
            SELECT ctid, run_id, position, due_at, state, wait_reason, lease_owner, lease_token,
                   attempts, attempt_started_at
            FROM steps
            WHERE due_at <= now()
            ORDER BY due_at
            LIMIT $2
            FOR UPDATE SKIP LOCKED
        ),
        claimed AS (
            UPDATE steps s SET
                state = $5,
                lease_owner = $1,
                lease_token = nextval('lease_tokens'),
                due_at = now() + make_interval(secs => $3),
                -- A poll or a throttle continues the same attempt; anything else starts a new one,
                -- including a takeover after a crash, so a step that crashes its worker cannot loop forever.
                attempts = s.attempts + CASE WHEN due.state = $6 AND due.wait_reason <> $7
                                             THEN 0 ELSE 1 END,
                wait_reason = NULL,
                started_at = coalesce(s.started_at, now()),
                attempt_started_at = now(),
                updated_at = now()
            FROM due
            -- The rows just locked, fetched by their address: as a join on the key, the planner
            -- would hash the whole steps table for a batch it takes to be as large as the limit.
            WHERE s.ctid = ANY(ARRAY(SELECT ctid FROM due))
              AND s.run_id = due.run_id AND s.position = due.position
            RETURNING s.run_id, s.position, s.name, s.attempts, s.throttles, s.lease_token,
                      s.started_at, due.due_at AS was_due, due.state AS was_state,
                      due.lease_owner AS was_owner, due.lease_token AS was_token,
                      due.attempts AS was_attempt, due.attempt_started_at AS was_started
        ),
        -- Per-row lookups by primary key, written so the planner cannot turn them into joins: it
        -- underestimates a claimed batch and would hash the whole runs or tenants table for it.
        ctx AS (
            SELECT c.*, (SELECT r.tenant_id FROM runs r WHERE r.id = c.run_id) AS tenant_id,
                   (SELECT r.workflow FROM runs r WHERE r.id = c.run_id) AS workflow
            FROM claimed c
        ),
        started AS (
            UPDATE tenants t SET state = $8, updated_at = now()
            WHERE t.id = ANY(ARRAY(SELECT tenant_id FROM ctx)) AND t.state = $9
            RETURNING t.id
        ),
        -- A claim starts an attempt and writes no history: the attempt's row is written when it ends.
        -- Taking over an expired lease ends the previous owner's attempt, which wrote nothing.
        abandoned AS (
            -- At the claim's time, which is when the taker's attempt starts: the two do not overlap.
            INSERT INTO history (tenant_id, at, kind, step, attempt, lease_token, actor, message,
                                 started_at)
            SELECT c.tenant_id, now(), $4, c.name, c.was_attempt, c.was_token, c.was_owner,
                   'attempt ' || c.was_attempt || ' abandoned: the lease of '
                   || coalesce(c.was_owner, '?') || ' expired; ' || $1 || ' took the step over',
                   c.was_started
            FROM ctx c
            WHERE c.was_state = $5
        )
        SELECT c.run_id AS "run_id!", c.position AS "position!", c.name AS "step!",
               c.attempts AS "attempts!", c.throttles AS "throttles!", c.lease_token AS "lease_token!",
               c.started_at AS "started_at!", c.was_due AS "was_due!",
               CASE WHEN c.was_state = $5 THEN c.was_owner END AS took_over_from,
               t.id AS "tenant_id!", t.slug AS "slug!", t.name AS "name!", t.owner_email AS "owner_email!",
               t.tier AS "tier!", c.workflow AS "workflow!", t.resources AS "resources!",
               now() AS "claimed_at!"
        FROM ctx c
        -- OFFSET 0 keeps this a per-row primary-key lookup too (see ctx).
        CROSS JOIN LATERAL (SELECT * FROM tenants WHERE id = c.tenant_id OFFSET 0) t
        "#,
        owner,
        limit,
        lease.as_secs_f64(),
        HistoryKind::StepAbandoned.as_str(),
        StepState::Running.as_str(),
        StepState::Waiting.as_str(),
        WaitReason::Backoff.as_str(),
        TenantState::Provisioning.as_str(),
        TenantState::Pending.as_str(),
    )
    .fetch_all(db)
    .await?;
    rows.into_iter()
        .map(|r| {
            Ok(Claim {
                tier: decode("tenants.tier", &r.tier, |s| Tier::parse(s).ok())?,
                run_id: r.run_id,
                position: r.position,
                step: r.step,
                attempts: r.attempts,
                throttles: r.throttles,
                lease_token: r.lease_token,
                started_at: r.started_at,
                was_due: r.was_due,
                took_over_from: r.took_over_from,
                tenant_id: r.tenant_id,
                slug: r.slug,
                name: r.name,
                owner_email: r.owner_email,
                workflow: r.workflow,
                resources: r.resources,
                claimed_at: r.claimed_at,
            })
        })
        .collect()
}

/// The next step of a tenant, claimed together with its predecessor's success.
#[derive(Debug, Clone)]
pub struct NextStep {
    pub position: i32,
    pub name: String,
    pub attempts: i32,
    pub throttles: i32,
    pub lease_token: i64,
    pub started_at: DateTime<Utc>,
    pub claimed_at: DateTime<Utc>,
}

/// One successful step in a [`succeed_many`] batch.
#[derive(Debug, Clone)]
pub struct Success {
    pub lease: Lease,
    pub tenant_id: Uuid,
    pub step: String,
    pub attempt: i32,
    /// Merged into the tenant's resources.
    pub patch: Value,
    pub event_id: Uuid,
    pub payload: Value,
    /// The name of the workflow's next step, whose row is written (or, after an operator's rewind,
    /// found pending) and claimed for the batch's owner. `None` after the last step: the run
    /// succeeds, the tenant takes the purpose's done state (`active`, `closed`), and `done_event` is
    /// written too.
    pub next_step: Option<String>,
    pub purpose: Purpose,
    pub done_event: Uuid,
}

/// What [`succeed_many`] wrote for one [`Success`], in input order.
#[derive(Debug, Clone)]
pub enum SuccessResult {
    /// The lease was lost: nothing was written for this step.
    LeaseLost,
    /// Written; the tenant's next step, now the owner's, if it was pending.
    Written(Option<NextStep>),
}

/// Group commit of successful steps: every step's success, history, events and deliveries, the next
/// step's claim or the tenant's activation, for many tenants in one statement. Each step is fenced on
/// its own (a lost lease writes nothing for that step and does not hold back the others). Returns the
/// per-step results in input order and the number of outbox deliveries created.
pub async fn succeed_many(
    db: impl PgExecutor<'_>,
    owner: &str,
    next_lease: Duration,
    batch: Vec<Success>,
) -> Result<(Vec<SuccessResult>, i64), sqlx::Error> {
    let n = batch.len();
    let (mut runs, mut positions, mut tokens, mut tenants) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut steps, mut attempts, mut patches, mut events) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut payloads, mut lasts, mut next_steps, mut done_events) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut done_states, mut done_types, mut done_messages) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for s in batch {
        runs.push(s.lease.run_id);
        positions.push(s.lease.position);
        tokens.push(s.lease.token);
        tenants.push(s.tenant_id);
        steps.push(s.step);
        attempts.push(s.attempt);
        patches.push(s.patch);
        events.push(s.event_id);
        payloads.push(s.payload);
        let last = s.next_step.is_none();
        lasts.push(last);
        next_steps.push(s.next_step.unwrap_or_default());
        done_events.push(s.done_event);
        let done = s.purpose.done_state();
        done_states.push(done.as_str());
        done_types.push(s.purpose.done_event().as_str());
        // Read only for a run's last step: no allocation for the others on the hot path.
        done_messages.push(if last {
            format!("{} → {}", s.purpose.running_state().as_str(), done.as_str())
        } else {
            String::new()
        });
    }
    let rows = sqlx::query!(
        r#"
        WITH input AS (
            SELECT * FROM unnest($1::uuid[], $2::int[], $3::bigint[], $4::uuid[], $5::text[], $6::int[],
                                 $7::jsonb[], $8::uuid[], $9::jsonb[], $10::bool[], $11::uuid[],
                                 $14::text[], $15::text[], $16::text[], $20::text[])
                WITH ORDINALITY AS i(run_id, position, token, tenant_id, step, attempt, patch, event_id,
                                     payload, last, done_event, done_state, done_type, done_message,
                                     next_step, ord)
        ),
        -- Joined on the key, not on an address looked up first (`ctid`, as the claim does for rows it
        -- has just locked): a row whose heartbeat commits while this waits for it is then followed to
        -- its new version and fenced there, where an address would miss it and drop a sound success.
        fenced AS (
            UPDATE steps s SET state = $21, wait_reason = NULL, due_at = NULL,
                   last_error = NULL, last_error_code = NULL, finished_at = now(),
                   lease_owner = NULL, updated_at = now()
            FROM input i
            WHERE s.run_id = i.run_id AND s.position = i.position AND s.lease_token = i.token
              AND s.state = $22
            RETURNING i.ord, i.run_id, i.position, i.token, i.tenant_id, i.step, i.attempt, i.patch,
                      i.event_id, i.payload, i.last, i.done_event, i.done_state, i.done_type,
                      i.done_message, i.next_step, s.attempt_started_at
        ),
        tenant AS (
            UPDATE tenants t SET resources = t.resources || f.patch,
                   state = CASE WHEN f.last THEN f.done_state ELSE t.state END, updated_at = now()
            FROM fenced f
            WHERE t.id = f.tenant_id AND (f.last OR f.patch <> '{}'::jsonb)
        ),
        run AS (
            UPDATE runs r SET state = $19, updated_at = now()
            FROM fenced f
            WHERE r.id = f.run_id AND f.last
        ),
        -- The next step's row is written when the run reaches it, already claimed; one an operator's
        -- rewind left behind is claimed if it is pending, and left alone otherwise.
        next AS (
            INSERT INTO steps AS s (run_id, position, name, state, lease_owner, lease_token, due_at,
                                    attempts, started_at, attempt_started_at)
            SELECT f.run_id, f.position + 1, f.next_step, $22, $12, nextval('lease_tokens'),
                   now() + make_interval(secs => $13), 1, now(), now()
            FROM fenced f WHERE NOT f.last
            ON CONFLICT (run_id, position) DO UPDATE
                SET state = $22, lease_owner = excluded.lease_owner,
                    lease_token = excluded.lease_token, due_at = excluded.due_at,
                    attempts = s.attempts + 1, wait_reason = NULL,
                    started_at = coalesce(s.started_at, now()), attempt_started_at = now(),
                    updated_at = now()
                WHERE s.state = $23
            RETURNING s.run_id, s.position, s.name, s.attempts, s.throttles, s.lease_token, s.started_at
        ),
        -- One INSERT per table, rows in order: data-modifying CTEs run in no guaranteed order, and a
        -- tenant's history must read "succeeded" before "active". The next step's attempt gets its
        -- row when it ends; it starts at this statement's time, which is when these end.
        history AS (
            INSERT INTO history (tenant_id, at, kind, step, attempt, lease_token, actor, message,
                                 started_at)
            SELECT h.tenant_id, now(), h.kind, h.step, h.attempt, h.token, h.actor, h.message,
                   h.started_at
            FROM (
                SELECT f.ord, 1 AS sub, f.tenant_id, $17::text AS kind, f.step, f.attempt,
                       f.token, $12::text AS actor, 'step succeeded' AS message, f.attempt_started_at
                       AS started_at
                FROM fenced f
                UNION ALL
                SELECT f.ord, 2, f.tenant_id, $18::text, NULL, NULL, NULL, NULL,
                       f.done_message, NULL
                FROM fenced f WHERE f.last
            ) h
            ORDER BY h.ord, h.sub
        ),
        events AS (
            INSERT INTO events (id, tenant_id, type, payload)
            SELECT e.id, e.tenant_id, e.type, e.payload
            FROM (
                SELECT f.ord, 1 AS sub, f.event_id AS id, f.tenant_id, $24::text AS type,
                       f.payload
                FROM fenced f
                UNION ALL
                SELECT f.ord, 2, f.done_event, f.tenant_id, f.done_type, f.payload
                FROM fenced f WHERE f.last
            ) e
            ORDER BY e.ord, e.sub
            RETURNING id
        ),
        deliveries AS (
            INSERT INTO deliveries (event_id, endpoint_id, state, due_at)
            SELECT events.id, ep.id, $25, now() FROM events, endpoints ep WHERE ep.disabled_at IS NULL
            RETURNING 1
        )
        SELECT i.ord AS "ord!", (f.ord IS NOT NULL) AS "fenced!",
               n.position AS "position?", n.name AS "name?", n.attempts AS "attempts?",
               n.throttles AS "throttles?", n.lease_token AS "lease_token?",
               n.started_at AS "started_at?", now() AS "now!",
               (SELECT count(*) FROM deliveries) AS "deliveries!"
        FROM input i LEFT JOIN fenced f ON f.ord = i.ord
             LEFT JOIN next n ON n.run_id = f.run_id AND n.position = f.position + 1
        ORDER BY i.ord
        "#,
        &runs,
        &positions,
        &tokens,
        &tenants,
        &steps,
        &attempts,
        &patches,
        &events,
        &payloads,
        &lasts,
        &done_events,
        owner,
        next_lease.as_secs_f64(),
        &done_states as &[&str],
        &done_types as &[&str],
        &done_messages,
        HistoryKind::StepSucceeded.as_str(),
        HistoryKind::TenantState.as_str(),
        RunState::Succeeded.as_str(),
        &next_steps,
        StepState::Succeeded.as_str(),
        StepState::Running.as_str(),
        StepState::Pending.as_str(),
        EventType::StepSucceeded.as_str(),
        DeliveryState::Pending.as_str(),
    )
    .fetch_all(db)
    .await?;
    let deliveries = rows.first().map_or(0, |r| r.deliveries);
    let results = rows
        .into_iter()
        .map(|row| {
            if !row.fenced {
                return SuccessResult::LeaseLost;
            }
            let next = match (
                row.position,
                row.name,
                row.attempts,
                row.throttles,
                row.lease_token,
                row.started_at,
            ) {
                (
                    Some(position),
                    Some(name),
                    Some(attempts),
                    Some(throttles),
                    Some(lease_token),
                    Some(started_at),
                ) => Some(NextStep {
                    position,
                    name,
                    attempts,
                    throttles,
                    lease_token,
                    started_at,
                    claimed_at: row.now,
                }),
                _ => None,
            };
            SuccessResult::Written(next)
        })
        .collect();
    Ok((results, deliveries))
}

/// When the next step becomes due (a timer or lease expiring), if any: an idle worker sleeps until
/// then instead of a fixed poll interval.
pub async fn next_due(db: impl PgExecutor<'_>) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT min(due_at) AS next FROM steps WHERE due_at IS NOT NULL"#)
        .fetch_one(db)
        .await
}

/// Extends a lease; `false` if the lease was lost (another worker holds the step now).
pub async fn heartbeat(
    db: impl PgExecutor<'_>,
    lease: Lease,
    extend_by: Duration,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query!(
        r#"UPDATE steps SET due_at = now() + make_interval(secs => $4)
           WHERE run_id = $1 AND position = $2 AND lease_token = $3 AND state = $5"#,
        lease.run_id,
        lease.position,
        lease.token,
        extend_by.as_secs_f64(),
        StepState::Running.as_str(),
    )
    .execute(db)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Locks the step for the rest of the transaction if `lease` still holds it; `false` if it was lost.
/// Every write made on behalf of a claim goes after this check in the same transaction.
pub async fn fence(conn: &mut PgConnection, lease: Lease) -> Result<bool, sqlx::Error> {
    let row = sqlx::query_scalar!(
        r#"SELECT 1 AS "one!" FROM steps
           WHERE run_id = $1 AND position = $2 AND lease_token = $3 AND state = $4
           FOR UPDATE"#,
        lease.run_id,
        lease.position,
        lease.token,
        StepState::Running.as_str(),
    )
    .fetch_optional(conn)
    .await?;
    Ok(row.is_some())
}

/// What the engine decided for the step whose attempt just ended.
#[derive(Debug, Clone)]
pub enum StepUpdate<'a> {
    Succeeded,
    Waiting {
        reason: WaitReason,
        after: Duration,
        error_code: Option<&'a str>,
        error: Option<&'a str>,
    },
    Failed {
        error_code: &'a str,
        error: &'a str,
    },
}

/// Writes a fenced step's new state. Call after [`fence`] in the same transaction.
pub async fn update_after_attempt(
    conn: &mut PgConnection,
    lease: Lease,
    update: &StepUpdate<'_>,
) -> Result<(), sqlx::Error> {
    let (state, reason, after, code, error) = match update {
        StepUpdate::Succeeded => (StepState::Succeeded, None, None, None, None),
        StepUpdate::Waiting {
            reason,
            after,
            error_code,
            error,
        } => (
            StepState::Waiting,
            Some(reason.as_str()),
            Some(after.as_secs_f64()),
            *error_code,
            *error,
        ),
        StepUpdate::Failed { error_code, error } => (
            StepState::Failed,
            None,
            None,
            Some(*error_code),
            Some(*error),
        ),
    };
    let finished = matches!(state, StepState::Succeeded | StepState::Failed);
    sqlx::query!(
        r#"UPDATE steps SET
               state = $4,
               wait_reason = $5,
               due_at = CASE WHEN $6::float8 IS NULL THEN NULL ELSE now() + make_interval(secs => $6) END,
               throttles = throttles + CASE WHEN $5 = $10 THEN 1 ELSE 0 END,
               polls = polls + CASE WHEN $5 = $11 THEN 1 ELSE 0 END,
               -- A success clears the error of earlier attempts; a poll keeps whatever was there.
               last_error = CASE WHEN $4 = $12 THEN NULL ELSE coalesce($7, last_error) END,
               last_error_code = CASE WHEN $4 = $12 THEN NULL ELSE coalesce($8, last_error_code) END,
               finished_at = CASE WHEN $9 THEN now() END,
               lease_owner = NULL,
               updated_at = now()
           WHERE run_id = $1 AND position = $2 AND lease_token = $3"#,
        lease.run_id,
        lease.position,
        lease.token,
        state.as_str(),
        reason,
        after,
        error,
        code,
        finished,
        WaitReason::Throttle.as_str(),
        WaitReason::Poll.as_str(),
        StepState::Succeeded.as_str(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Makes the step `name` at `position` of `run_id` due now (the workflow advanced to it): its row is
/// written, or found where an operator's rewind left it.
pub async fn make_due(
    conn: &mut PgConnection,
    run_id: Uuid,
    position: i32,
    name: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"INSERT INTO steps AS s (run_id, position, name, state, due_at)
           VALUES ($1, $2, $3, $4, now())
           ON CONFLICT (run_id, position) DO UPDATE SET state = $4, due_at = now(), updated_at = now()"#,
        run_id,
        position,
        name,
        StepState::Pending.as_str(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct Step {
    pub position: i32,
    pub name: String,
    pub state: StepState,
    pub wait_reason: Option<WaitReason>,
    pub due_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub throttles: i32,
    pub polls: i32,
    pub last_error: Option<String>,
    pub last_error_code: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub lease_owner: Option<String>,
    pub lease_token: Option<i64>,
    pub attempt_started_at: Option<DateTime<Utc>>,
}

impl Step {
    /// When the step will be tried next, if it is waiting for that.
    pub fn next_attempt_at(&self) -> Option<DateTime<Utc>> {
        match self.state {
            StepState::Pending | StepState::Waiting => self.due_at,
            _ => None,
        }
    }
}

struct StepRecord {
    position: i32,
    name: String,
    state: String,
    wait_reason: Option<String>,
    due_at: Option<DateTime<Utc>>,
    attempts: i32,
    throttles: i32,
    polls: i32,
    last_error: Option<String>,
    last_error_code: Option<String>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    lease_owner: Option<String>,
    lease_token: Option<i64>,
    attempt_started_at: Option<DateTime<Utc>>,
}

impl TryFrom<StepRecord> for Step {
    type Error = sqlx::Error;
    fn try_from(r: StepRecord) -> Result<Self, sqlx::Error> {
        Ok(Step {
            state: decode("steps.state", &r.state, StepState::parse)?,
            wait_reason: r
                .wait_reason
                .map(|w| decode("steps.wait_reason", &w, WaitReason::parse))
                .transpose()?,
            position: r.position,
            name: r.name,
            due_at: r.due_at,
            attempts: r.attempts,
            throttles: r.throttles,
            polls: r.polls,
            last_error: r.last_error,
            last_error_code: r.last_error_code,
            started_at: r.started_at,
            finished_at: r.finished_at,
            lease_owner: r.lease_owner,
            lease_token: r.lease_token,
            attempt_started_at: r.attempt_started_at,
        })
    }
}

/// A run's step rows followed by the workflow's steps it has not reached, as never-tried pending
/// steps: every step of the run, as views and operator actions see it. Without the workflow (no
/// longer loaded) only the rows.
pub fn with_unreached(mut steps: Vec<Step>, workflow: Option<&Workflow>) -> Vec<Step> {
    let Some(workflow) = workflow else {
        return steps;
    };
    let reached = steps.last().map_or(0, |s| s.position as usize + 1);
    for (position, def) in workflow.steps.iter().enumerate().skip(reached) {
        steps.push(Step {
            position: position as i32,
            name: def.name.clone(),
            state: StepState::Pending,
            wait_reason: None,
            due_at: None,
            attempts: 0,
            throttles: 0,
            polls: 0,
            last_error: None,
            last_error_code: None,
            started_at: None,
            finished_at: None,
            lease_owner: None,
            lease_token: None,
            attempt_started_at: None,
        });
    }
    steps
}

/// The steps of a run in order.
pub async fn for_run(db: impl PgExecutor<'_>, run_id: Uuid) -> Result<Vec<Step>, sqlx::Error> {
    sqlx::query_as!(
        StepRecord,
        r#"SELECT position, name, state, wait_reason, due_at, attempts, throttles, polls,
                  last_error, last_error_code, started_at, finished_at, lease_owner, lease_token,
                  attempt_started_at
           FROM steps WHERE run_id = $1 ORDER BY position"#,
        run_id
    )
    .fetch_all(db)
    .await?
    .into_iter()
    .map(Step::try_from)
    .collect()
}

/// The steps of a run in order, locked for the rest of the transaction (operator actions: a claim in
/// progress finishes first, and no claim can start until the action commits).
pub async fn lock_for_run(conn: &mut PgConnection, run_id: Uuid) -> Result<Vec<Step>, sqlx::Error> {
    sqlx::query_as!(
        StepRecord,
        r#"SELECT position, name, state, wait_reason, due_at, attempts, throttles, polls,
                  last_error, last_error_code, started_at, finished_at, lease_owner, lease_token,
                  attempt_started_at
           FROM steps WHERE run_id = $1 ORDER BY position FOR UPDATE"#,
        run_id
    )
    .fetch_all(conn)
    .await?
    .into_iter()
    .map(Step::try_from)
    .collect()
}

/// Operator `retry` of a failed step: a fresh attempt budget, due now.
pub async fn reset_failed(
    conn: &mut PgConnection,
    run_id: Uuid,
    position: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"UPDATE steps SET state = $3, due_at = now(), attempts = 0, throttles = 0,
                  wait_reason = NULL, finished_at = NULL, lease_owner = NULL, lease_token = NULL,
                  updated_at = now()
           WHERE run_id = $1 AND position = $2"#,
        run_id,
        position,
        StepState::Pending.as_str(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Operator `retry` of a waiting step: end its wait now.
pub async fn due_now(
    conn: &mut PgConnection,
    run_id: Uuid,
    position: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE steps SET due_at = now(), updated_at = now() WHERE run_id = $1 AND position = $2",
        run_id,
        position
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Operator `requeue`: every step from `position` on starts over; that step is due now. Clearing the
/// lease token fences out any worker still holding one of these steps.
pub async fn rewind(
    conn: &mut PgConnection,
    run_id: Uuid,
    position: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        r#"UPDATE steps SET state = $3,
                  due_at = CASE WHEN position = $2 THEN now() END,
                  attempts = 0, throttles = 0, polls = 0, wait_reason = NULL,
                  last_error = NULL, last_error_code = NULL,
                  started_at = NULL, finished_at = NULL, lease_owner = NULL, lease_token = NULL,
                  updated_at = now()
           WHERE run_id = $1 AND position >= $2"#,
        run_id,
        position,
        StepState::Pending.as_str(),
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Step counts by state, and how many are due now but not yet claimed (the queue depth).
pub async fn stats(db: impl PgExecutor<'_>) -> Result<(Vec<(String, i64)>, i64), sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT state, count(*) AS "n!",
                  count(*) FILTER (WHERE state IN ($1, $2) AND due_at <= now()) AS "due!"
           FROM steps GROUP BY state"#,
        StepState::Pending.as_str(),
        StepState::Waiting.as_str(),
    )
    .fetch_all(db)
    .await?;
    let due = rows.iter().map(|r| r.due).sum();
    Ok((rows.into_iter().map(|r| (r.state, r.n)).collect(), due))
}
