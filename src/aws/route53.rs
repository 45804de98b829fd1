//! Route53 in the management account: the central hosted zone of the base domain and the tenants'
//! records in it.

use aws_sdk_route53::Client;
pub use aws_sdk_route53::types::ChangeAction;
use aws_sdk_route53::types::{
    AliasTarget, Change, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};

use crate::domain::ErrorClass;

use super::{Aws, AwsError};

pub struct Route53 {
    aws: Aws,
    client: Client,
    /// Changes to one zone go one at a time: AWS answers `PriorRequestNotComplete` to a change sent
    /// while the zone's previous one is still being applied.
    zone_locks:
        std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
}

/// The code of a CREATE that found the record already there.
pub const RECORD_EXISTS: &str = "RecordExists";

fn cname(name: &str, value: &str) -> Result<ResourceRecordSet, aws_sdk_route53::error::BuildError> {
    ResourceRecord::builder()
        .value(value)
        .build()
        .and_then(|r| {
            ResourceRecordSet::builder()
                .name(absolute(name))
                .r#type(RrType::Cname)
                .ttl(60)
                .resource_records(r)
                .build()
        })
}

fn absolute(name: &str) -> String {
    format!("{}.", name.trim_end_matches('.'))
}

impl Route53 {
    pub fn new(aws: Aws) -> Self {
        let client = Client::new(&aws.sdk);
        Self {
            aws,
            client,
            zone_locks: Default::default(),
        }
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

    /// Points the record `name` at the API Gateway regional target: an alias A record when the
    /// target's hosted zone is known (AWS always says), a CNAME otherwise (some emulators do not).
    /// `Create` fails with [`RECORD_EXISTS`] when any such record is there already, so a record vend
    /// did not make is never overwritten; `Upsert` is for replacing the tenant's own.
    pub async fn set_target(
        &self,
        action: ChangeAction,
        zone_id: &str,
        name: &str,
        target_dns: &str,
        target_zone_id: &str,
    ) -> Result<String, AwsError> {
        const COMMENT: &str = "vend: tenant endpoint";
        if target_zone_id.is_empty() {
            let set = cname(name, target_dns);
            return self.change(action, zone_id, set, COMMENT).await;
        }
        let set = AliasTarget::builder()
            .dns_name(target_dns)
            .hosted_zone_id(target_zone_id)
            .evaluate_target_health(false)
            .build()
            .and_then(|alias| {
                ResourceRecordSet::builder()
                    .name(absolute(name))
                    .r#type(RrType::A)
                    .alias_target(alias)
                    .build()
            });
        self.change(action, zone_id, set, COMMENT).await
    }

    /// UPSERT the CNAME `name` → `value`. Idempotent.
    pub async fn upsert_cname(
        &self,
        zone_id: &str,
        name: &str,
        value: &str,
        comment: &str,
    ) -> Result<String, AwsError> {
        self.change(ChangeAction::Upsert, zone_id, cname(name, value), comment)
            .await
    }

    async fn change(
        &self,
        action: ChangeAction,
        zone_id: &str,
        set: Result<ResourceRecordSet, aws_sdk_route53::error::BuildError>,
        comment: &str,
    ) -> Result<String, AwsError> {
        let batch = set
            .and_then(|set| {
                ChangeBatch::builder()
                    .comment(comment)
                    .changes(
                        Change::builder()
                            .action(action.clone())
                            .resource_record_set(set)
                            .build()?,
                    )
                    .build()
            })
            .map_err(|e| AwsError::new(ErrorClass::Permanent, "InvalidRequest", e.to_string()))?;
        let lock = self
            .zone_locks
            .lock()
            .expect("zone lock map")
            .entry(zone_id.to_owned())
            .or_default()
            .clone();
        let _one_change_at_a_time = lock.lock().await;
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
            .await
            .map_err(|mut e| {
                // A CREATE of a name that exists: AWS says so in an InvalidChangeBatch message.
                if action == ChangeAction::Create
                    && e.code == "InvalidChangeBatch"
                    && e.message.contains("already exists")
                {
                    e.class = ErrorClass::Permanent;
                    e.code = RECORD_EXISTS.into();
                }
                e
            })?;
        Ok(out
            .change_info()
            .map(|c| c.id().to_owned())
            .unwrap_or_default())
    }

    /// Deletes the record `name` if, and only if, it points at `target` (vend's own record for a
    /// tenant); `Ok(false)` when there is no such record. A record pointing elsewhere is not vend's
    /// to delete and is left alone.
    pub async fn delete_if_points_at(
        &self,
        zone_id: &str,
        name: &str,
        target: &str,
    ) -> Result<bool, AwsError> {
        let same = |a: &str| {
            a.trim_end_matches('.')
                .eq_ignore_ascii_case(target.trim_end_matches('.'))
        };
        let ours = self
            .address_records(zone_id, name)
            .await?
            .into_iter()
            .find(|r| target_of_record(r).is_some_and(|t| same(&t)));
        let Some(set) = ours else {
            return Ok(false);
        };
        match self
            .change(
                ChangeAction::Delete,
                zone_id,
                Ok(set),
                "vend: tenant offboarded",
            )
            .await
        {
            Ok(_) => Ok(true),
            // Gone between the look and the delete (an earlier attempt's delete landing late).
            Err(e) if e.code == "InvalidChangeBatch" && e.message.contains("not found") => {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Where the record `name` points (an alias's target, a CNAME's value or an address), if an A,
    /// AAAA or CNAME record of that name exists.
    pub async fn target_of(&self, zone_id: &str, name: &str) -> Result<Option<String>, AwsError> {
        Ok(self
            .address_records(zone_id, name)
            .await?
            .iter()
            .find_map(target_of_record))
    }

    /// The A, AAAA and CNAME records named exactly `name`.
    async fn address_records(
        &self,
        zone_id: &str,
        name: &str,
    ) -> Result<Vec<ResourceRecordSet>, AwsError> {
        let want = absolute(name);
        let out = self
            .aws
            .call(
                "route53.ListResourceRecordSets",
                self.client
                    .list_resource_record_sets()
                    .hosted_zone_id(zone_id)
                    .start_record_name(&want)
                    .max_items(4)
                    .send(),
            )
            .await?;
        Ok(out
            .resource_record_sets()
            .iter()
            .filter(|r| {
                r.name().eq_ignore_ascii_case(&want)
                    && matches!(r.r#type(), RrType::A | RrType::Aaaa | RrType::Cname)
            })
            .cloned()
            .collect())
    }
}

/// Whatever a record answers with: an alias's target, or its first value (an address someone put
/// there by hand counts as much as an alias), without the trailing dot.
fn target_of_record(r: &ResourceRecordSet) -> Option<String> {
    r.alias_target()
        .map(|a| a.dns_name().to_owned())
        .or_else(|| r.resource_records().first().map(|v| v.value().to_owned()))
        .map(|d| d.trim_end_matches('.').to_owned())
}
