//! `update_stack`: the step of the rollout workflow. It converges the tenant's stack (or baseline) to
//! the template of the rollout recorded in the tenant's resources (`rollout_id`), exactly as that
//! template was when the rollout started, and records the version the stack now runs.

use std::sync::Arc;

use async_trait::async_trait;

use crate::aws::cloudformation::Cfn;
use crate::db;
use crate::domain::{Resource, StackKind};
use crate::domain::{StepError, StepOutcome};
use crate::engine::{NamedStep, StepContext};

use super::stack::{StackProgress, converge};
use super::{Silo, account_id};

pub struct UpdateStack(pub Arc<Silo>);

#[async_trait]
impl NamedStep for UpdateStack {
    const KIND: &'static str = "update_stack";
    async fn attempt(&self, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
        run(&self.0, ctx).await
    }
}

async fn run(silo: &Silo, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
    let account = account_id(ctx)?;
    let rollout = ctx
        .resource_str(Resource::RolloutId)
        .and_then(|r| uuid::Uuid::parse_str(r).ok())
        .ok_or_else(|| StepError::permanent("NoRollout", "no rollout recorded for the tenant"))?;
    let (stack, template, version) = db::rollouts::template(&silo.pool, rollout)
        .await
        .map_err(|e| StepError::transient("DatabaseError", e.to_string()))?
        .ok_or_else(|| {
            StepError::permanent("NoRollout", format!("rollout {rollout} does not exist"))
        })?;
    let kind = if stack == "baseline" {
        StackKind::Baseline
    } else {
        StackKind::Tenant
    };
    let progress = if kind == StackKind::Baseline {
        let inside = silo.accounts.in_account(&account, &ctx.tenant.slug).await?;
        let cfn = Cfn::new(&inside);
        let spec = super::bootstrap_baseline::spec(silo, ctx, template);
        let progress = converge(ctx, &silo.pool, &cfn, spec, StackKind::Baseline).await?;
        // The baseline's rollout carries the account settings to existing tenants too.
        if matches!(progress, StackProgress::Ready(_))
            && let Some(wait) = super::account_settings::apply(silo, ctx, &inside, &account).await?
        {
            return Ok(wait);
        }
        progress
    } else {
        let role = ctx
            .resource_str(Resource::DeploymentRoleArn)
            .map(str::to_owned)
            .ok_or_else(|| {
                StepError::permanent("NoDeploymentRole", "no deployment role recorded")
            })?;
        let cfn = Cfn::new(&super::in_tenant_region(silo, ctx, &account).await?);
        let spec = super::deploy_stack::spec(ctx, role, template);
        converge(ctx, &silo.pool, &cfn, spec, StackKind::Tenant).await?
    };
    match progress {
        StackProgress::InProgress { note, after } => Ok(StepOutcome::Wait { after, note }),
        StackProgress::Ready(ready) => {
            if kind == StackKind::Baseline {
                if let Some(role) = ready.outputs.get("DeploymentRoleArn") {
                    ctx.set_resource(Resource::DeploymentRoleArn, role.clone());
                }
            } else {
                for (k, key) in [
                    ("ApiId", Resource::ApiId),
                    ("StageName", Resource::ApiStage),
                ] {
                    if let Some(v) = ready.outputs.get(k) {
                        ctx.set_resource(key, v.clone());
                    }
                }
            }
            ctx.set_resource(Resource::StackVersion(kind), version);
            Ok(StepOutcome::Succeeded)
        }
    }
}
