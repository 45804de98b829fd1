//! What a step implementation sees: the [`Step`] trait, its [`StepContext`], and the [`Registry`] of
//! implementations by kind.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Map, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::db;
use crate::db::steps::Lease;
use crate::domain::Resource;
use crate::domain::{StepError, StepOutcome, Tier};

/// One kind of step. `run` must be idempotent: it may run again after a crash at any point, so it first
/// looks at what is already done (its saved resources, then the outside world) before acting.
#[async_trait]
pub trait Step: Send + Sync {
    async fn run(&self, ctx: &mut StepContext) -> StepOutcome;
}

/// A step kind of vend's own workflows: the name workflows call it by, and a body written with `?`
/// (an error is the attempt's failure, classified by the retry policy).
#[async_trait]
pub trait NamedStep: Send + Sync {
    const KIND: &'static str;
    async fn attempt(&self, ctx: &mut StepContext) -> Result<StepOutcome, StepError>;
}

#[async_trait]
impl<T: NamedStep> Step for T {
    async fn run(&self, ctx: &mut StepContext) -> StepOutcome {
        self.attempt(ctx).await.unwrap_or_else(StepOutcome::Failed)
    }
}

/// The tenant a step works for.
#[derive(Debug, Clone)]
pub struct TenantInfo {
    pub id: Uuid,
    pub slug: String,
    pub name: String,
    pub owner_email: String,
    pub tier: Tier,
}

impl TenantInfo {
    /// The tenant as events show it, in `state`, with the attempt's resources.
    pub fn for_event<'a>(
        &'a self,
        state: crate::domain::TenantState,
        resources: &'a Map<String, Value>,
    ) -> crate::domain::events::EventTenant<'a> {
        crate::domain::events::EventTenant {
            slug: &self.slug,
            name: &self.name,
            owner_email: &self.owner_email,
            tier: self.tier,
            state,
            account_id: None,
            endpoint: None,
            region: None,
        }
        .with_resources(resources)
    }
}

/// A step attempt's view of its tenant and a way to save what it learns.
pub struct StepContext {
    pub tenant: TenantInfo,
    pub step: String,
    /// Attempt number (1-based); polls and throttled retries continue an attempt.
    pub attempt: u32,
    /// How often the step should poll if it waits on something asynchronous.
    pub poll_interval: Duration,
    resources: Map<String, Value>,
    patch: Map<String, Value>,
    pool: PgPool,
    lease: Lease,
}

impl StepContext {
    pub(crate) fn new(
        tenant: TenantInfo,
        step: String,
        attempt: u32,
        poll_interval: Duration,
        resources: Value,
        pool: PgPool,
        lease: Lease,
    ) -> Self {
        let resources = match resources {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        Self {
            tenant,
            step,
            attempt,
            poll_interval,
            resources,
            patch: Map::new(),
            pool,
            lease,
        }
    }

    /// A resource saved by this or an earlier step (account id, request id, stack id, ...).
    pub fn resource(&self, key: Resource) -> Option<&Value> {
        self.resources.get(key.key())
    }

    pub fn resource_str(&self, key: Resource) -> Option<&str> {
        self.resource(key).and_then(Value::as_str)
    }

    /// Records a resource to be committed together with this attempt's outcome.
    pub fn set_resource(&mut self, key: Resource, value: impl Into<Value>) {
        let v = value.into();
        self.resources.insert(key.key().to_owned(), v.clone());
        self.patch.insert(key.key().to_owned(), v);
    }

    /// Commits a resource now, before the step goes on, so a crash right after cannot lose it (an
    /// external id the moment AWS returns it, or an intent before a call that must not repeat).
    /// Fenced: fails if this attempt's lease was taken over.
    pub async fn save_resource(
        &mut self,
        key: Resource,
        value: impl Into<Value>,
    ) -> Result<(), StepError> {
        let key = key.key();
        let v = value.into();
        let mut patch = Map::new();
        patch.insert(key.to_owned(), v.clone());
        let saved = async {
            let mut tx = self.pool.begin().await?;
            if !db::steps::fence(&mut tx, self.lease).await? {
                return Ok(false);
            }
            db::tenants::merge_resources(&mut tx, self.tenant.id, &Value::Object(patch)).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(true)
        }
        .await
        .map_err(|e| StepError::transient("DatabaseError", format!("could not save {key}: {e}")))?;
        if !saved {
            return Err(StepError::transient(
                "LeaseLost",
                "another worker took over this step",
            ));
        }
        self.resources.insert(key.to_owned(), v);
        Ok(())
    }

    pub(crate) fn take_patch(&mut self) -> Map<String, Value> {
        std::mem::take(&mut self.patch)
    }

    pub(crate) fn resources(&self) -> &Map<String, Value> {
        &self.resources
    }
}

/// Step implementations by kind.
#[derive(Clone, Default)]
pub struct Registry {
    steps: BTreeMap<String, Arc<dyn Step>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, kind: &str, step: impl Step + 'static) -> Self {
        self.steps.insert(kind.to_owned(), Arc::new(step));
        self
    }

    /// Registers a [`NamedStep`] under its own kind.
    pub fn with_named<T: NamedStep + 'static>(self, step: T) -> Self {
        self.with(T::KIND, step)
    }

    pub fn get(&self, kind: &str) -> Option<Arc<dyn Step>> {
        self.steps.get(kind).cloned()
    }

    pub fn kinds(&self) -> BTreeSet<String> {
        self.steps.keys().cloned().collect()
    }
}
