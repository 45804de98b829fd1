//! A signup: the tenant, its run with the first step due, the history entry, the `tenant.created`
//! event and the stored answer, made durable in one statement (one round trip, one commit), shared
//! with the signups arriving at the same moment. It never calls AWS.

use std::sync::Arc;

use chrono::{DurationRound, TimeDelta, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;

use crate::db;
use crate::db::tenants::{NewSignup, SignupInsert, StoredAnswer, Tenant};
use crate::domain::events;
use crate::domain::{EventType, HistoryKind, Signup, TenantState, Workflow};
use crate::group_commit::{CommitError, GroupCommit};

/// The resource key of the tenant's region.
pub const REGION: &str = crate::domain::Resource::Region.key();

/// How a signup ended.
#[derive(Debug)]
pub enum Outcome {
    /// Stored now; the answer to give.
    Accepted(StoredAnswer),
    /// The same webhook-id was answered before: that answer, verbatim.
    Replayed(StoredAnswer),
    /// The slug belongs to a tenant made by another request.
    SlugTaken,
    /// The webhook-id was used for another signup whose answer is gone (retention); nothing stored.
    WebhookIdReused,
}

/// The tenant a signup makes, before it is stored. Timestamps are cut to Postgres' microseconds so
/// the stored answer and later reads show the same instant.
pub fn new_tenant(
    signup: &Signup,
    workflow: &Workflow,
    region: Option<String>,
    webhook_id: &str,
) -> Tenant {
    let now = Utc::now()
        .duration_trunc(TimeDelta::microseconds(1))
        .unwrap_or_else(|_| Utc::now());
    Tenant {
        id: Uuid::now_v7(),
        slug: signup.slug.as_str().to_owned(),
        name: signup.name.as_str().to_owned(),
        owner_email: signup.owner_email.as_str().to_owned(),
        tier: signup.tier,
        workflow: workflow.name.clone(),
        state: TenantState::Pending,
        // The region is the tenant's from the start; steps read it with the other resources.
        resources: match region {
            Some(r) => json!({ REGION: r }),
            None => json!({}),
        },
        signup_id: webhook_id.to_owned(),
        created_at: now,
        updated_at: now,
    }
}

/// Everything `tenant`'s signup writes besides the tenant: its run, history entry, `tenant.created`
/// event and the stored answer.
pub fn prepare(tenant: Tenant, workflow: &Workflow, answer: StoredAnswer) -> NewSignup {
    NewSignup {
        history_message: format!("signup accepted; workflow {}", workflow.name),
        history_detail: json!({"webhook_id": tenant.signup_id, "tier": tenant.tier}),
        event_payload: events::payload(&tenant.for_event(), None, Value::Null),
        tenant,
        run_id: Uuid::now_v7(),
        // A loaded workflow has at least one step (refused at load otherwise).
        first_step: workflow.steps[0].name.clone(),
        history_kind: HistoryKind::SignupAccepted.as_str(),
        event_id: Uuid::now_v7(),
        event_type: EventType::TenantCreated.as_str(),
        answer,
    }
}

/// At most this many signups share one statement. A batch this size is about 60 kB of parameters and
/// a few milliseconds of Postgres time; larger ones would hold their first signup longer than they save.
const MAX_BATCH: usize = 64;

/// Statements in flight at once. Alone a signup never waits for another; under load the queue forms
/// behind these and is written in batches, so commits per signup fall as the rate rises.
const PARALLEL_FLUSHES: usize = 4;

/// The signup path's writer: signups arriving together are stored by one statement and one commit
/// (see [`crate::group_commit`]); each gets its own outcome.
pub struct Intake {
    pool: PgPool,
    commits: GroupCommit<NewSignup, SignupInsert, sqlx::Error>,
}

impl Intake {
    pub fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Self {
            pool,
            commits: GroupCommit::new(MAX_BATCH, PARALLEL_FLUSHES),
        })
    }

    /// Stores `tenant` (from [`new_tenant`]) with its run, answering `answer`.
    ///
    /// The write runs on its own task: a client that hangs up must not abort a statement that carries
    /// other clients' signups.
    pub async fn accept(
        self: &Arc<Self>,
        tenant: Tenant,
        workflow: &Workflow,
        answer: StoredAnswer,
    ) -> Result<Outcome, sqlx::Error> {
        let signup_id = tenant.signup_id.clone();
        let new = prepare(tenant, workflow, answer.clone());
        let this = self.clone();
        let inserted = tokio::spawn(async move {
            this.commits
                .submit(new, |batch| {
                    let pool = this.pool.clone();
                    async move { db::tenants::insert_signups(&pool, &batch).await }
                })
                .await
                .map_err(CommitError::into_sqlx)
        })
        .await
        .map_err(|e| sqlx::Error::Protocol(format!("the signup's write task failed: {e}")))??;
        match inserted {
            SignupInsert::Inserted => Ok(Outcome::Accepted(answer)),
            // A replay (or a concurrent duplicate that committed first) finds its answer; a slug taken
            // by another request does not.
            SignupInsert::SlugTaken => Ok(
                match db::tenants::find_signup_answer(&self.pool, &signup_id).await? {
                    Some(a) => Outcome::Replayed(a),
                    None => Outcome::SlugTaken,
                },
            ),
            SignupInsert::WebhookIdTaken => Ok(
                match db::tenants::find_signup_answer(&self.pool, &signup_id).await? {
                    Some(a) => Outcome::Replayed(a),
                    None => Outcome::WebhookIdReused,
                },
            ),
        }
    }
}
