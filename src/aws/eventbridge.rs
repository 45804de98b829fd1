//! EventBridge: the central bus progress events go to (`Source` `vend`), created if missing.

use async_trait::async_trait;
use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;

use crate::engine::dispatcher::{BusEvent, EventBus};

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
    /// Lets every account of the organization put events on the bus (the baselines forward to it).
    pub async fn allow_organization(&self, organization_id: &str) -> Result<(), AwsError> {
        use aws_sdk_eventbridge::types::Condition;
        let condition = Condition::builder()
            .r#type("StringEquals")
            .key("aws:PrincipalOrgID")
            .value(organization_id)
            .build()
            .map_err(|e| {
                AwsError::new(
                    crate::domain::ErrorClass::Permanent,
                    "InvalidRequest",
                    e.to_string(),
                )
            })?;
        self.aws
            .call(
                "eventbridge.PutPermission",
                self.client
                    .put_permission()
                    .event_bus_name(&self.bus)
                    .action("events:PutEvents")
                    .principal("*")
                    .statement_id("vend-organization-accounts")
                    .condition(condition)
                    .send(),
            )
            .await
            .map(|_| ())
    }
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
