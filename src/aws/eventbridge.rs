//! EventBridge: the central bus progress events go to (`Source` `vend`), created if missing.

use async_trait::async_trait;
use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;

use crate::domain::events::{BusEvent, EventBus};

use super::{Aws, AwsError};

pub const SOURCE: &str = "vend";

pub struct EventBridge {
    aws: Aws,
    client: Client,
    bus: String,
}

impl EventBridge {
    pub fn new(aws: Aws, bus: &str) -> Self {
        let client = Client::new(&aws.sdk);
        Self {
            aws,
            client,
            bus: bus.to_owned(),
        }
    }

    /// The bus's ARN, creating the bus first if it does not exist.
    pub async fn ensure_bus(&self) -> Result<String, AwsError> {
        match self
            .aws
            .call(
                "eventbridge.DescribeEventBus",
                self.client.describe_event_bus().name(&self.bus).send(),
            )
            .await
        {
            Ok(d) => Ok(d.arn().unwrap_or_default().to_owned()),
            Err(e) if e.code == "ResourceNotFoundException" => {
                let r = self
                    .aws
                    .call(
                        "eventbridge.CreateEventBus",
                        self.client.create_event_bus().name(&self.bus).send(),
                    )
                    .await;
                match r {
                    Ok(c) => Ok(c.event_bus_arn().unwrap_or_default().to_owned()),
                    // Another replica created it first.
                    Err(e) if e.code == "ResourceAlreadyExistsException" => {
                        Box::pin(self.ensure_bus()).await
                    }
                    Err(e) => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }
}

impl EventBridge {
    /// Lets the accounts under the tenant OU, and no other, put events on the bus (the baselines
    /// forward their accounts' events to it). The policy is the bus's whole resource policy (vend
    /// owns the bus), keyed on the accounts' organization path so it stays one statement however many
    /// tenants there are.
    pub async fn allow_tenant_accounts(
        &self,
        bus_arn: &str,
        organization_id: &str,
        root_id: &str,
        tenant_ou_id: &str,
    ) -> Result<(), AwsError> {
        let policy = tenant_accounts_policy(bus_arn, organization_id, root_id, tenant_ou_id);
        self.aws
            .call(
                "eventbridge.PutPermission",
                self.client
                    .put_permission()
                    .event_bus_name(&self.bus)
                    .policy(policy.to_string())
                    .send(),
            )
            .await
            .map(|_| ())
    }
}

/// The bus policy: `events:PutEvents` for principals whose organization path is under the tenant OU.
pub fn tenant_accounts_policy(
    bus_arn: &str,
    organization_id: &str,
    root_id: &str,
    tenant_ou_id: &str,
) -> serde_json::Value {
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "vend-tenant-accounts",
            "Effect": "Allow",
            "Principal": "*",
            "Action": "events:PutEvents",
            "Resource": bus_arn,
            "Condition": {
                "ForAnyValue:StringLike": {
                    "aws:PrincipalOrgPaths": [format!("{organization_id}/{root_id}/{tenant_ou_id}/*")]
                }
            }
        }]
    })
}

#[async_trait]
impl EventBus for EventBridge {
    fn name(&self) -> &str {
        &self.bus
    }

    async fn put(&self, events: &[BusEvent]) -> Result<Vec<Result<(), String>>, String> {
        let entries: Vec<PutEventsRequestEntry> = events
            .iter()
            .map(|e| {
                PutEventsRequestEntry::builder()
                    .event_bus_name(&self.bus)
                    .source(SOURCE)
                    .detail_type(&e.detail_type)
                    .detail(&e.detail)
                    .time(aws_smithy_types::DateTime::from_millis(
                        e.time.timestamp_millis(),
                    ))
                    .resources(format!("vend:event:{}", e.id))
                    .build()
            })
            .collect();
        let out = self
            .aws
            .call(
                "eventbridge.PutEvents",
                self.client.put_events().set_entries(Some(entries)).send(),
            )
            .await
            .map_err(|e| e.to_string())?;
        // Partial failure is reported per entry, in order; only the failed ones are retried.
        Ok(out
            .entries()
            .iter()
            .map(|r| match r.error_code() {
                Some(code) => Err(format!("{code}: {}", r.error_message().unwrap_or(""))),
                None => Ok(()),
            })
            .collect())
    }
}
