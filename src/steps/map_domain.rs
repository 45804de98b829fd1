//! `map_domain`: the regional custom domain `<slug>.<base domain>` in the tenant account, mapped to the
//! tenant's API, and an alias record for it in the central hosted zone. Each piece is looked up before
//! it is made: API Gateway silently replaces a domain created twice, and allows one creation per 30 s.

use std::sync::Arc;

use async_trait::async_trait;

use crate::aws::apigateway::ApiGateway;
use crate::domain::{StepError, StepOutcome};
use crate::engine::{Step, StepContext};

use super::{Silo, account_id, finish};

pub struct MapDomain(pub Arc<Silo>);

#[async_trait]
impl Step for MapDomain {
    async fn run(&self, ctx: &mut StepContext) -> StepOutcome {
        finish(run(&self.0, ctx).await)
    }
}

async fn run(silo: &Silo, ctx: &mut StepContext) -> Result<StepOutcome, StepError> {
    let account = account_id(ctx)?;
    let missing = |k: &str| {
        StepError::permanent(
            "NoApi",
            format!("no {k} recorded; requeue from deploy_stack"),
        )
    };
    let api_id = ctx
        .resource_str("api_id")
        .map(str::to_owned)
        .ok_or_else(|| missing("api_id"))?;
    let stage = ctx
        .resource_str("api_stage")
        .map(str::to_owned)
        .ok_or_else(|| missing("api_stage"))?;
    let domain = silo.settings.tenant_domain(&ctx.tenant.slug);

    let apigw = ApiGateway::new(&silo.accounts.in_account(&account).await?);
    let target = match apigw.get_domain(&domain).await? {
        Some(t) => t,
        None => {
            apigw
                .create_domain(&domain, &silo.settings.certificate_arn)
                .await?
        }
    };
    ctx.save_resource("domain_name", domain.clone()).await?;
    ctx.set_resource("domain_target", target.regional_domain_name.clone());

    apigw.ensure_root_mapping(&domain, &api_id, &stage).await?;

    let zone = &silo.management.hosted_zone_id;
    let current = silo.route53.target_of(zone, &domain).await?;
    if current.as_deref() != Some(target.regional_domain_name.as_str()) {
        silo.route53
            .upsert_target(
                zone,
                &domain,
                &target.regional_domain_name,
                &target.regional_hosted_zone_id,
            )
            .await?;
    }
    ctx.set_resource("endpoint", format!("https://{domain}"));
    Ok(StepOutcome::Succeeded)
}
