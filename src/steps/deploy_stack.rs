//! `deploy_stack`: converge the tenant's serverless stack (DynamoDB table, Lambda function, REST API with
//! a stage) in the tenant account, deployed by CloudFormation through the baseline's deployment role,
//! and record its outputs (API id and stage) for `map_domain`.

use std::sync::Arc;

use async_trait::async_trait;

use crate::aws::cloudformation::{Cfn, StackSpec};
use crate::domain::{Resource, StackKind};
use crate::domain::{StepError, StepOutcome};
use crate::engine::{NamedStep, StepContext};

use super::stack::{StackProgress, converge};
use super::{Silo, account_id};

pub const STACK_NAME: &str = "vend-tenant";

pub struct DeployStack(pub Arc<Silo>);

#[async_trait]
impl NamedStep for DeployStack {
    const KIND: &'static str = "deploy_stack";
    async fn attempt(&self, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
        run(&self.0, ctx).await
    }
}

async fn run(silo: &Silo, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
    let account = account_id(ctx)?;
    let role = ctx
        .resource_str(Resource::DeploymentRoleArn)
        .map(str::to_owned)
        .ok_or_else(|| {
            StepError::permanent(
                "NoDeploymentRole",
                "no deployment role recorded; requeue from bootstrap_baseline",
            )
        })?;
    let cfn = Cfn::new(&super::in_tenant_region(silo, ctx, &account).await?);
    let (template, version) = super::provisioning_template(silo, "tenant").await?;
    let spec = spec(ctx, role, template);
    match converge(ctx, &silo.pool, &cfn, spec, StackKind::Tenant).await? {
        StackProgress::InProgress { note, after } => Ok(StepOutcome::Wait { after, note }),
        StackProgress::Ready(stack) => {
            let output = |k: &str| {
                stack.outputs.get(k).cloned().ok_or_else(|| {
                    StepError::permanent(
                        "StackOutputMissing",
                        format!("the tenant stack has no {k} output"),
                    )
                })
            };
            ctx.set_resource(Resource::ApiId, output("ApiId")?);
            ctx.set_resource(Resource::ApiStage, output("StageName")?);
            ctx.set_resource(Resource::StackVersion(StackKind::Tenant), version);
            Ok(StepOutcome::Succeeded)
        }
    }
}

/// The tenant stack made from `template_body` (the file at start, or a rollout's), deployed through
/// the baseline's deployment role `role`.
pub(crate) fn spec(ctx: &StepContext, role: String, template_body: String) -> StackSpec {
    StackSpec {
        name: STACK_NAME.into(),
        template_body,
        parameters: vec![("TenantSlug".into(), ctx.tenant.slug.clone())],
        role_arn: Some(role),
        tags: vec![("vend:tenant".into(), ctx.tenant.slug.clone())],
    }
}
