//! `bootstrap_baseline`: assume the access role in the tenant account (a new account refuses for its
//! first minutes: retried, bounded by the step's timeout) and converge the baseline stack: the deployment
//! role for the tenant stack, event forwarding to the central bus, and the account's CloudTrail; and,
//! while CloudFormation works on it, apply the account's settings (`account_settings`): alternate
//! contacts, the ops group's Identity Center access, the tenant's opt-in region, no default VPCs,
//! service quotas.

use std::sync::Arc;

use async_trait::async_trait;

use crate::aws::cloudformation::{Cfn, StackSpec};
use crate::domain::{Resource, StackKind};
use crate::domain::{StepError, StepOutcome};
use crate::engine::{NamedStep, StepContext};

use super::stack::{StackProgress, converge};
use super::{Silo, account_id};

pub const STACK_NAME: &str = "vend-baseline";

pub struct BootstrapBaseline(pub Arc<Silo>);

#[async_trait]
impl NamedStep for BootstrapBaseline {
    const KIND: &'static str = "bootstrap_baseline";
    async fn attempt(&self, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
        run(&self.0, ctx).await
    }
}

async fn run(silo: &Silo, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
    let account = account_id(ctx)?;
    let inside = silo.accounts.in_account(&account, &ctx.tenant.slug).await?;
    let cfn = Cfn::new(&inside);
    let (template, version) = super::provisioning_template(silo, "baseline").await?;
    let spec = spec(silo, ctx, template);
    let progress = converge(ctx, &silo.pool, &cfn, spec, StackKind::Baseline).await?;
    // The account's settings do not depend on the stack: applied while CloudFormation works on it,
    // so the default VPC sweep's calls hide behind the stack's minutes instead of adding to them.
    let applying = std::time::Instant::now();
    let settings = super::account_settings::apply(silo, ctx, &inside, &account).await?;
    match progress {
        // The wait was reckoned from when the stack's state was read: the time spent on the
        // settings since then is part of it.
        StackProgress::InProgress { note, after } => Ok(StepOutcome::Wait {
            after: after.saturating_sub(applying.elapsed()),
            note,
        }),
        StackProgress::Ready(stack) => {
            let role = stack
                .outputs
                .get("DeploymentRoleArn")
                .cloned()
                .ok_or_else(|| {
                    StepError::permanent(
                        "StackOutputMissing",
                        "the baseline stack has no DeploymentRoleArn output",
                    )
                })?;
            ctx.set_resource(Resource::DeploymentRoleArn, role);
            ctx.set_resource(Resource::StackVersion(StackKind::Baseline), version);
            Ok(settings.unwrap_or(StepOutcome::Succeeded))
        }
    }
}

/// The tenant's baseline stack made from `template_body` (the file at start, or a rollout's).
pub(crate) fn spec(silo: &Silo, ctx: &StepContext, template_body: String) -> StackSpec {
    StackSpec {
        name: STACK_NAME.into(),
        template_body,
        parameters: vec![
            ("TenantSlug".into(), ctx.tenant.slug.clone()),
            (
                "CentralEventBusArn".into(),
                silo.management.event_bus_arn.clone(),
            ),
            (
                "EnableCloudTrail".into(),
                silo.settings.baseline_cloudtrail.to_string(),
            ),
        ],
        role_arn: None,
        tags: vec![("vend:tenant".into(), ctx.tenant.slug.clone())],
    }
}
