//! The steps only tier changes have (workflows/upgrade.toml, downgrade.toml, plan.toml); the rest of
//! those workflows are the silo's and the pool's own steps, which read the tier a change moves the
//! tenant to (`tier_to`).

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::aws::apigateway::ApiGateway;
use crate::aws::dynamodb::TenantTable;
use crate::domain::{Resource, StepError, StepOutcome, Workflows};
use crate::engine::{NamedStep, StepContext};

use super::Silo;
use super::pool::{load_pool, pool_in};

fn db_error(e: sqlx::Error) -> StepError {
    StepError::transient("DatabaseError", e.to_string())
}

/// `switch_tier`: the tenant's tier (and the workflow that serves it) becomes the one its change
/// moves it to, and `tenant.tier.changed` goes out. Placed right after the step that repoints its
/// record; a rerun after the switch changes nothing.
pub struct SwitchTier {
    pub silo: Arc<Silo>,
    pub workflows: Arc<Workflows>,
}

#[async_trait]
impl NamedStep for SwitchTier {
    const KIND: &'static str = "switch_tier";
    async fn attempt(&self, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
        crate::lifecycle::tier::switch(&self.silo.pool, &self.workflows, ctx.tenant.id)
            .await
            .map_err(db_error)?;
        Ok(StepOutcome::Succeeded)
    }
}

/// `leave_pool`: after an upgrade, the tenant's API key and its item in the pool's tenant table go
/// (only the key vend recorded for it, only the item with its tenant id).
pub struct LeavePool(pub Arc<Silo>);

#[async_trait]
impl NamedStep for LeavePool {
    const KIND: &'static str = "leave_pool";
    async fn attempt(&self, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
        let silo = &self.0;
        let pool = load_pool(silo).await?;
        let Some(account) = pool.account_id.clone() else {
            return Ok(StepOutcome::Succeeded);
        };
        let slug = ctx.tenant.slug.clone();
        let aws = pool_in(silo, &account, &slug).await?;
        if let Some(key) = ctx.resource_str(Resource::PoolApiKeyId).map(str::to_owned) {
            ApiGateway::new(&aws).delete_api_key(&key).await?;
            ctx.save_resource(Resource::PoolApiKeyId, Value::Null)
                .await?;
        }
        if let Some(table) = &pool.table {
            TenantTable::new(&aws, table)
                .deregister(&slug, &ctx.tenant.id.to_string())
                .await?;
        }
        ctx.set_resource(Resource::PoolPlanTier, Value::Null);
        Ok(StepOutcome::Succeeded)
    }
}

/// `retire_grace`: after a downgrade, the account the tenant left waits `VEND_OFFBOARD_GRACE` (from
/// the change's request) before anything in it is deleted.
pub struct RetireGrace;

#[async_trait]
impl NamedStep for RetireGrace {
    const KIND: &'static str = "retire_grace";
    async fn attempt(&self, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
        let until = ctx.resource_str(Resource::RetireAfter).map(str::to_owned);
        Ok(match super::offboard::time_until(until.as_deref()) {
            Some(left) => StepOutcome::Wait {
                after: left,
                note: format!(
                    "the old account is kept until {}",
                    until.unwrap_or_default()
                ),
            },
            None => StepOutcome::Succeeded,
        })
    }
}

/// `retire_domain`: the custom domain in the account the tenant left goes. Its record in the central
/// zone is not touched: it points at the pool now.
pub struct RetireDomain(pub Arc<Silo>);

#[async_trait]
impl NamedStep for RetireDomain {
    const KIND: &'static str = "retire_domain";
    async fn attempt(&self, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
        let silo = &self.0;
        let Some(account) = ctx.resource_str(Resource::AccountId).map(str::to_owned) else {
            return Ok(StepOutcome::Succeeded);
        };
        let domain = silo.settings.tenant_domain(&ctx.tenant.slug);
        let apigw = ApiGateway::new(&super::in_tenant_region(silo, ctx, &account).await?);
        apigw.delete_root_mapping(&domain).await?;
        apigw.delete_domain(&domain).await?;
        Ok(StepOutcome::Succeeded)
    }
}

/// `forget_account`: the closed account leaves the tenant's record (kept in `retired_accounts`), with
/// what lived in it: the tenant is the pool's now.
pub struct ForgetAccount;

/// What a tenant's record says about its own account and what vend made in it.
const ACCOUNT_RESOURCES: [Resource; 8] = [
    Resource::AccountId,
    Resource::ApiId,
    Resource::ApiStage,
    Resource::CertificateArn,
    Resource::DeploymentRoleArn,
    Resource::OuId,
    Resource::CreateRequestId,
    Resource::CreateIntentAt,
];

#[async_trait]
impl NamedStep for ForgetAccount {
    const KIND: &'static str = "forget_account";
    async fn attempt(&self, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
        let Some(account) = ctx.resource_str(Resource::AccountId).map(str::to_owned) else {
            return Ok(StepOutcome::Succeeded);
        };
        let mut retired: Vec<Value> = ctx
            .resource(Resource::RetiredAccounts)
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if !retired.iter().any(|a| a["account_id"] == account.as_str()) {
            retired.push(json!({"account_id": account, "closed_at": chrono::Utc::now()}));
        }
        ctx.set_resource(Resource::RetiredAccounts, retired);
        for r in ACCOUNT_RESOURCES {
            ctx.set_resource(r, Value::Null);
        }
        Ok(StepOutcome::Succeeded)
    }
}

/// The step kinds only tier changes have.
pub const TIER_KINDS: [&str; 5] = [
    SwitchTier::KIND,
    LeavePool::KIND,
    RetireGrace::KIND,
    RetireDomain::KIND,
    ForgetAccount::KIND,
];
