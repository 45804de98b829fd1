//! Tenants, their runs, and signup idempotency.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::domain::{Signup, TenantState, Tier, Workflow};

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
        self.resources.get("account_id").and_then(Value::as_str)
    }

    pub fn endpoint(&self) -> Option<&str> {
        self.resources.get("endpoint").and_then(Value::as_str)
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

/// Inserts the tenant unless its slug is taken; `None` means taken (the caller tells a replay from a
/// conflict by the existing tenant's `signup_id`).
pub async fn insert_tenant(
    conn: &mut PgConnection,
    id: Uuid,
    signup: &Signup,
    workflow: &str,
    webhook_id: &str,
) -> Result<Option<Tenant>, sqlx::Error> {
    let rec = sqlx::query_as!(
        TenantRecord,
        r#"INSERT INTO tenants (id, slug, name, owner_email, tier, workflow, state, signup_id)
           VALUES ($1, $2, $3, $4, $5, $6, 'pending', $7)
           ON CONFLICT (slug) DO NOTHING
           RETURNING id, slug, name, owner_email, tier, workflow, state, resources, signup_id,
                     created_at, updated_at"#,
        id,
        signup.slug.as_str(),
        signup.name.as_str(),
        signup.owner_email.as_str(),
        signup.tier.as_str(),
        workflow,
        webhook_id,
    )
    .fetch_optional(conn)
    .await?;
    rec.map(Tenant::try_from).transpose()
}

/// Records the answer for `webhook_id`; `false` if another request stored one first.
pub async fn insert_signup_answer(
    conn: &mut PgConnection,
    webhook_id: &str,
    tenant_id: Uuid,
    answer: &StoredAnswer,
) -> Result<bool, sqlx::Error> {
    let r = sqlx::query!(
        r#"INSERT INTO signup_requests (webhook_id, tenant_id, status, response)
           VALUES ($1, $2, $3, $4) ON CONFLICT (webhook_id) DO NOTHING"#,
        webhook_id,
        tenant_id,
        answer.status as i16,
        answer.response,
    )
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Creates the tenant's run with a row for every step; the first step is due now.
pub async fn insert_run(
    conn: &mut PgConnection,
    run_id: Uuid,
    tenant_id: Uuid,
    workflow: &Workflow,
) -> Result<(), sqlx::Error> {
    let names: Vec<String> = workflow.steps.iter().map(|s| s.name.clone()).collect();
    sqlx::query!(
        r#"WITH run AS (
               INSERT INTO runs (id, tenant_id, workflow, state) VALUES ($1, $2, $3, 'running')
               RETURNING id
           )
           INSERT INTO steps (run_id, position, name, state, due_at)
           SELECT run.id, s.ord - 1, s.name, 'pending', CASE WHEN s.ord = 1 THEN now() END
           FROM run, unnest($4::text[]) WITH ORDINALITY AS s(name, ord)"#,
        run_id,
        tenant_id,
        workflow.name,
        &names,
    )
    .execute(conn)
    .await?;
    Ok(())
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

/// A page of tenants, newest first. `before` is the id of the last tenant of the previous page.
/// Two statements rather than one with `$1 IS NULL OR ...`: a prepared statement gets a generic plan,
/// and only the filtered form can walk the `(state, id)` index.
pub async fn list(
    db: impl PgExecutor<'_>,
    state: Option<TenantState>,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Vec<Tenant>, sqlx::Error> {
    // UUIDv7 ids never reach the all-ones uuid: it stands for "from the newest".
    let before = before.unwrap_or(Uuid::max());
    let recs =
        match state {
            Some(state) => sqlx::query_as!(
                TenantRecord,
                r#"SELECT id, slug, name, owner_email, tier, workflow, state, resources, signup_id,
                          created_at, updated_at
                   FROM tenants
                   WHERE state = $1 AND id < $2
                   ORDER BY id DESC
                   LIMIT $3"#,
                state.as_str(),
                before,
                limit,
            )
            .fetch_all(db)
            .await?,
            None => sqlx::query_as!(
                TenantRecord,
                r#"SELECT id, slug, name, owner_email, tier, workflow, state, resources, signup_id,
                          created_at, updated_at
                   FROM tenants
                   WHERE id < $1
                   ORDER BY id DESC
                   LIMIT $2"#,
                before,
                limit,
            )
            .fetch_all(db)
            .await?,
        };
    recs.into_iter().map(Tenant::try_from).collect()
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
    pub state: String,
}

/// The tenant's current (latest) run.
pub async fn current_run(
    db: impl PgExecutor<'_>,
    tenant_id: Uuid,
) -> Result<Option<Run>, sqlx::Error> {
    sqlx::query_as!(
        Run,
        r#"SELECT id, workflow, state FROM runs WHERE tenant_id = $1
           ORDER BY created_at DESC LIMIT 1"#,
        tenant_id
    )
    .fetch_optional(db)
    .await
}

pub async fn set_run_state(
    conn: &mut PgConnection,
    run_id: Uuid,
    state: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE runs SET state = $2, updated_at = now() WHERE id = $1",
        run_id,
        state
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Tenants per state, for metrics.
pub async fn count_by_state(db: impl PgExecutor<'_>) -> Result<Vec<(String, i64)>, sqlx::Error> {
    let rows = sqlx::query!(r#"SELECT state, count(*) AS "n!" FROM tenants GROUP BY state"#)
        .fetch_all(db)
        .await?;
    Ok(rows.into_iter().map(|r| (r.state, r.n)).collect())
}
