//! DynamoDB in the pool account: the pooled stack's tenant table, one item per pool tenant keyed by
//! its slug.

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::AttributeValue;

use super::{Aws, AwsError};

pub struct TenantTable {
    aws: Aws,
    client: Client,
    table: String,
}

/// DynamoDB's answer when a condition does not hold: the slug is someone else's.
pub const CONDITION_FAILED: &str = "ConditionalCheckFailedException";

impl TenantTable {
    pub fn new(aws: &Aws, table: &str) -> Self {
        Self {
            aws: aws.clone(),
            client: Client::new(&aws.sdk),
            table: table.to_owned(),
        }
    }

    /// Registers (or updates) the tenant `slug`, unless the item is another tenant's (another
    /// `tenant_id`): then `CONDITION_FAILED`. Writing the same item again changes nothing.
    pub async fn register(
        &self,
        slug: &str,
        tenant_id: &str,
        tier: &str,
        api_key_id: &str,
    ) -> Result<(), AwsError> {
        let s = |v: &str| AttributeValue::S(v.to_owned());
        self.aws
            .call(
                "dynamodb.PutItem",
                self.client
                    .put_item()
                    .table_name(&self.table)
                    .item("pk", s(slug))
                    .item("tenant_id", s(tenant_id))
                    .item("tier", s(tier))
                    .item("api_key_id", s(api_key_id))
                    .item("managed_by", s("vend"))
                    .condition_expression("attribute_not_exists(pk) OR tenant_id = :id")
                    .expression_attribute_values(":id", s(tenant_id))
                    .send(),
            )
            .await
            .map(|_| ())
    }

    /// The tenant id and tier registered for `slug`, if any.
    pub async fn get(&self, slug: &str) -> Result<Option<(String, String)>, AwsError> {
        let out = self
            .aws
            .call(
                "dynamodb.GetItem",
                self.client
                    .get_item()
                    .table_name(&self.table)
                    .key("pk", AttributeValue::S(slug.to_owned()))
                    .consistent_read(true)
                    .send(),
            )
            .await?;
        let field = |item: &std::collections::HashMap<String, AttributeValue>, k: &str| {
            item.get(k)
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_default()
        };
        Ok(out
            .item()
            .map(|i| (field(i, "tenant_id"), field(i, "tier"))))
    }

    /// Removes `slug`'s item if it is this tenant's (gone already, or another's, is left as is).
    pub async fn deregister(&self, slug: &str, tenant_id: &str) -> Result<(), AwsError> {
        match self
            .aws
            .call(
                "dynamodb.DeleteItem",
                self.client
                    .delete_item()
                    .table_name(&self.table)
                    .key("pk", AttributeValue::S(slug.to_owned()))
                    .condition_expression("attribute_not_exists(pk) OR tenant_id = :id")
                    .expression_attribute_values(":id", AttributeValue::S(tenant_id.to_owned()))
                    .send(),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.code == CONDITION_FAILED => Ok(()),
            Err(e) => Err(e),
        }
    }
}
