//! Route53 in the management account: the central hosted zone of the base domain and the tenants'
//! records in it.

use aws_sdk_route53::Client;
use aws_sdk_route53::types::{
    AliasTarget, Change, ChangeAction, ChangeBatch, ResourceRecordSet, RrType,
};

use crate::domain::ErrorClass;

use super::{Aws, AwsError};

pub struct Route53 {
    aws: Aws,
    client: Client,
}

fn absolute(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

impl Route53 {
    pub fn new(aws: Aws) -> Self {
        let client = Client::new(&aws.sdk);
        Self { aws, client }
    }

    /// The public hosted zone named exactly `domain`.
    pub async fn find_public_zone(&self, domain: &str) -> Result<Option<String>, AwsError> {
        let want = absolute(domain);
        let out = self
            .aws
            .call(
                "route53.ListHostedZonesByName",
                self.client
                    .list_hosted_zones_by_name()
                    .dns_name(&want)
                    .max_items(10)
                    .send(),
            )
            .await?;
        Ok(out
            .hosted_zones()
            .iter()
            .find(|z| {
                z.name().eq_ignore_ascii_case(&want)
                    && !z.config().is_some_and(|c| c.private_zone())
            })
            .map(|z| z.id().trim_start_matches("/hostedzone/").to_owned()))
    }

    /// UPSERT an alias A record `name` → the API Gateway regional target. Idempotent by nature.
    pub async fn upsert_alias(
        &self,
        zone_id: &str,
        name: &str,
        target_dns: &str,
        target_zone_id: &str,
    ) -> Result<String, AwsError> {
        let build = || -> Result<ChangeBatch, aws_sdk_route53::error::BuildError> {
            let alias = AliasTarget::builder()
                .dns_name(target_dns)
                .hosted_zone_id(target_zone_id)
                .evaluate_target_health(false)
                .build()?;
            let set = ResourceRecordSet::builder()
                .name(absolute(name))
                .r#type(RrType::A)
                .alias_target(alias)
                .build()?;
            ChangeBatch::builder()
                .comment("vend: tenant endpoint")
                .changes(
                    Change::builder()
                        .action(ChangeAction::Upsert)
                        .resource_record_set(set)
                        .build()?,
                )
                .build()
        };
        let batch = build()
            .map_err(|e| AwsError::new(ErrorClass::Permanent, "InvalidRequest", e.to_string()))?;
        let out = self
            .aws
            .call(
                "route53.ChangeResourceRecordSets",
                self.client
                    .change_resource_record_sets()
                    .hosted_zone_id(zone_id)
                    .change_batch(batch)
                    .send(),
            )
            .await?;
        Ok(out
            .change_info()
            .map(|c| c.id().to_owned())
            .unwrap_or_default())
    }

    /// The alias target of the A record `name`, if there is one.
    pub async fn alias_of(&self, zone_id: &str, name: &str) -> Result<Option<String>, AwsError> {
        let want = absolute(name);
        let out = self
            .aws
            .call(
                "route53.ListResourceRecordSets",
                self.client
                    .list_resource_record_sets()
                    .hosted_zone_id(zone_id)
                    .start_record_name(&want)
                    .start_record_type(RrType::A)
                    .max_items(1)
                    .send(),
            )
            .await?;
        Ok(out
            .resource_record_sets()
            .iter()
            .find(|r| r.name().eq_ignore_ascii_case(&want) && r.r#type() == &RrType::A)
            .and_then(|r| r.alias_target())
            .map(|a| a.dns_name().trim_end_matches('.').to_owned()))
    }
}
