//! CloudFormation in a tenant account: describe, create (with a client request token), update, delete.

use std::collections::BTreeMap;

use aws_sdk_cloudformation::Client;
use aws_sdk_cloudformation::types::{Capability, Parameter, Tag};

use super::{Aws, AwsError};

#[derive(Debug, Clone)]
pub struct StackSpec {
    pub name: String,
    pub template_body: String,
    pub parameters: Vec<(String, String)>,
    /// The service role CloudFormation deploys through (the tenant stack goes through vend-deployment).
    pub role_arn: Option<String>,
    pub tags: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct StackInfo {
    pub stack_id: String,
    pub status: String,
    pub reason: Option<String>,
    pub outputs: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
}

pub struct Cfn {
    aws: Aws,
    client: Client,
}

impl Cfn {
    /// CloudFormation as `aws` (scoped to a tenant account) sees it.
    pub fn new(aws: &Aws) -> Self {
        Self {
            aws: aws.clone(),
            client: Client::new(&aws.sdk),
        }
    }

    pub async fn describe(&self, name: &str) -> Result<Option<StackInfo>, AwsError> {
        let r = self
            .aws
            .call(
                "cloudformation.DescribeStacks",
                self.client.describe_stacks().stack_name(name).send(),
            )
            .await;
        let out = match r {
            Ok(o) => o,
            Err(e) if e.code == "ValidationError" && e.message.contains("does not exist") => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        Ok(out.stacks().first().map(|s| StackInfo {
            stack_id: s.stack_id().unwrap_or_default().to_owned(),
            status: s
                .stack_status()
                .map(|x| x.as_str().to_owned())
                .unwrap_or_default(),
            reason: s.stack_status_reason().map(str::to_owned),
            outputs: s
                .outputs()
                .iter()
                .filter_map(|o| Some((o.output_key()?.to_owned(), o.output_value()?.to_owned())))
                .collect(),
            tags: s
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_owned(), t.value()?.to_owned())))
                .collect(),
        }))
    }

    fn parameters(spec: &StackSpec) -> Vec<Parameter> {
        spec.parameters
            .iter()
            .map(|(k, v)| {
                Parameter::builder()
                    .parameter_key(k)
                    .parameter_value(v)
                    .build()
            })
            .collect()
    }

    fn tags(spec: &StackSpec) -> Vec<Tag> {
        spec.tags
            .iter()
            .map(|(k, v)| Tag::builder().key(k).value(v).build())
            .collect()
    }

    /// Creates the stack. `token` makes a retried call a no-op on AWS's side; an existing stack of that
    /// name is not an error (a create that happened before a crash).
    pub async fn create(&self, spec: &StackSpec, token: &str) -> Result<(), AwsError> {
        let r = self
            .aws
            .call(
                "cloudformation.CreateStack",
                self.client
                    .create_stack()
                    .stack_name(&spec.name)
                    .template_body(&spec.template_body)
                    .set_parameters(Some(Self::parameters(spec)))
                    .set_tags(Some(Self::tags(spec)))
                    .set_role_arn(spec.role_arn.clone())
                    .capabilities(Capability::CapabilityNamedIam)
                    .client_request_token(token)
                    .send(),
            )
            .await;
        match r {
            Err(e) if e.code == "AlreadyExistsException" => Ok(()),
            other => other.map(|_| ()),
        }
    }

    /// Updates the stack; `false` if there was nothing to change.
    pub async fn update(&self, spec: &StackSpec, token: &str) -> Result<bool, AwsError> {
        let r = self
            .aws
            .call(
                "cloudformation.UpdateStack",
                self.client
                    .update_stack()
                    .stack_name(&spec.name)
                    .template_body(&spec.template_body)
                    .set_parameters(Some(Self::parameters(spec)))
                    .set_tags(Some(Self::tags(spec)))
                    .set_role_arn(spec.role_arn.clone())
                    .capabilities(Capability::CapabilityNamedIam)
                    .client_request_token(token)
                    .send(),
            )
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e)
                if e.code == "ValidationError"
                    && e.message.contains("No updates are to be performed") =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    pub async fn delete(&self, name: &str, token: &str) -> Result<(), AwsError> {
        self.aws
            .call(
                "cloudformation.DeleteStack",
                self.client
                    .delete_stack()
                    .stack_name(name)
                    .client_request_token(token)
                    .send(),
            )
            .await
            .map(|_| ())
    }

    /// The first failure CloudFormation recorded for the stack, for a readable step error.
    pub async fn first_failure(&self, stack_id: &str) -> Result<Option<String>, AwsError> {
        let out = self
            .aws
            .call(
                "cloudformation.DescribeStackEvents",
                self.client
                    .describe_stack_events()
                    .stack_name(stack_id)
                    .send(),
            )
            .await?;
        // Events come newest first; the root cause is the oldest failure.
        Ok(out
            .stack_events()
            .iter()
            .rev()
            .find(|e| {
                e.resource_status()
                    .is_some_and(|s| s.as_str().ends_with("_FAILED"))
            })
            .map(|e| {
                format!(
                    "{} {}: {}",
                    e.logical_resource_id().unwrap_or("?"),
                    e.resource_status().map(|s| s.as_str()).unwrap_or(""),
                    e.resource_status_reason().unwrap_or("no reason given")
                )
            }))
    }
}
