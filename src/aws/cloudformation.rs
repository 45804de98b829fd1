//! CloudFormation in a tenant account: describe, create (with a client request token), update through a
//! change set (created, described, executed), delete.

use std::collections::BTreeMap;

use aws_sdk_cloudformation::Client;
use aws_sdk_cloudformation::types::{Capability, ChangeSetType, Parameter, Tag, TemplateStage};

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
    /// What the last drift detection found (`DRIFTED`, `IN_SYNC`, `UNKNOWN`, `NOT_CHECKED`), if
    /// CloudFormation reports it.
    pub drift: Option<String>,
}

/// A change set as CloudFormation reports it.
#[derive(Debug, Clone)]
pub struct ChangeSetInfo {
    /// `CREATE_PENDING`, `CREATE_IN_PROGRESS`, `CREATE_COMPLETE`, `DELETE_*` or `FAILED`.
    pub status: String,
    /// `AVAILABLE`, `UNAVAILABLE`, `EXECUTE_IN_PROGRESS`, `EXECUTE_COMPLETE`, `EXECUTE_FAILED`, `OBSOLETE`.
    pub execution_status: String,
    pub reason: Option<String>,
}

impl ChangeSetInfo {
    /// CloudFormation refused it because the stack already is what it describes.
    pub fn without_changes(&self) -> bool {
        self.status == "FAILED"
            && self.reason.as_deref().is_some_and(|r| {
                r.contains("didn't contain changes") || r.contains("No updates are to be performed")
            })
    }
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
        // A deleted stack is gone: AWS finds it by name no more, and an emulator that still lists
        // it must not make a step take it for the stack to converge.
        let live = out.stacks().first().filter(|s| {
            s.stack_status()
                .is_none_or(|x| x.as_str() != "DELETE_COMPLETE")
        });
        Ok(live.map(|s| StackInfo {
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
            drift: s
                .drift_information()
                .and_then(|d| d.stack_drift_status())
                .map(|d| d.as_str().to_owned()),
        }))
    }

    /// The template the stack runs, as it was submitted (`Original` stage); `None` without a stack.
    pub async fn template(&self, name: &str) -> Result<Option<String>, AwsError> {
        let r = self
            .aws
            .call(
                "cloudformation.GetTemplate",
                self.client
                    .get_template()
                    .stack_name(name)
                    .template_stage(TemplateStage::Original)
                    .send(),
            )
            .await;
        match r {
            Ok(o) => Ok(o.template_body().map(str::to_owned)),
            Err(e) if e.code == "ValidationError" && e.message.contains("does not exist") => {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Starts CloudFormation's drift detection on the stack; its result is in [`StackInfo::drift`]
    /// once it ends (seconds to minutes), which the next check reads. Nothing waits for it here.
    pub async fn detect_drift(&self, name: &str) -> Result<(), AwsError> {
        self.aws
            .call(
                "cloudformation.DetectStackDrift",
                self.client.detect_stack_drift().stack_name(name).send(),
            )
            .await
            .map(|_| ())
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

    /// The change set `change_set` of stack `stack`; `None` if there is none of that name.
    pub async fn change_set(
        &self,
        stack: &str,
        change_set: &str,
    ) -> Result<Option<ChangeSetInfo>, AwsError> {
        let r = self
            .aws
            .call(
                "cloudformation.DescribeChangeSet",
                self.client
                    .describe_change_set()
                    .stack_name(stack)
                    .change_set_name(change_set)
                    .send(),
            )
            .await;
        match r {
            Ok(o) => Ok(Some(ChangeSetInfo {
                status: o
                    .status()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
                execution_status: o
                    .execution_status()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
                reason: o.status_reason().map(str::to_owned),
            })),
            Err(e)
                if e.code.starts_with("ChangeSetNotFound")
                    || (e.code == "ValidationError" && e.message.contains("does not exist")) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Creates the update change set `change_set` for the stack as `spec` describes it (one of that
    /// name already there, from before a crash, is not an error); `false` if CloudFormation says there
    /// is nothing to change.
    pub async fn create_change_set(
        &self,
        spec: &StackSpec,
        change_set: &str,
        token: &str,
    ) -> Result<bool, AwsError> {
        let r = self
            .aws
            .call(
                "cloudformation.CreateChangeSet",
                self.client
                    .create_change_set()
                    .stack_name(&spec.name)
                    .change_set_name(change_set)
                    .change_set_type(ChangeSetType::Update)
                    .template_body(&spec.template_body)
                    .set_parameters(Some(Self::parameters(spec)))
                    .set_tags(Some(Self::tags(spec)))
                    .set_role_arn(spec.role_arn.clone())
                    .capabilities(Capability::CapabilityNamedIam)
                    .client_token(token)
                    .send(),
            )
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if e.code == "AlreadyExistsException" => Ok(true),
            Err(e)
                if e.code == "ValidationError"
                    && e.message.contains("No updates are to be performed") =>
            {
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Executes the change set; `token` makes a retried call a no-op on AWS's side.
    pub async fn execute_change_set(
        &self,
        stack: &str,
        change_set: &str,
        token: &str,
    ) -> Result<(), AwsError> {
        self.aws
            .call(
                "cloudformation.ExecuteChangeSet",
                self.client
                    .execute_change_set()
                    .stack_name(stack)
                    .change_set_name(change_set)
                    .client_request_token(token)
                    .send(),
            )
            .await
            .map(|_| ())
    }

    /// Deletes the change set (one already gone is fine).
    pub async fn delete_change_set(&self, stack: &str, change_set: &str) -> Result<(), AwsError> {
        let r = self
            .aws
            .call(
                "cloudformation.DeleteChangeSet",
                self.client
                    .delete_change_set()
                    .stack_name(stack)
                    .change_set_name(change_set)
                    .send(),
            )
            .await;
        match r {
            Err(e)
                if e.code.starts_with("ChangeSetNotFound")
                    || (e.code == "ValidationError" && e.message.contains("does not exist")) =>
            {
                Ok(())
            }
            other => other.map(|_| ()),
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
