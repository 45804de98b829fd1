//! AWS Organizations: account creation and placement, the tenant OU and its SCPs.

use async_trait::async_trait;
use aws_sdk_organizations::Client;
use aws_sdk_organizations::error::SdkError;
use aws_sdk_organizations::operation::create_account::CreateAccountError;
use aws_sdk_organizations::types::{
    CreateAccountFailureReason, CreateAccountState, CreateAccountStatus, PolicyType, Tag,
};

use crate::domain::ErrorClass;

use super::{Aws, AwsError};

/// Where a `CreateAccount` request stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CreateState {
    InProgress,
    Succeeded {
        account_id: String,
    },
    /// AWS's `FailureReason`, e.g. `EMAIL_ALREADY_EXISTS`.
    Failed {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    pub id: String,
    pub account_name: String,
    pub state: CreateState,
    /// How long AWS took, by its own timestamps (requested to completed), once it has finished.
    pub took: Option<std::time::Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub id: String,
    pub email: String,
    pub name: String,
    pub status: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySummary {
    pub id: String,
    pub name: String,
}

/// The tag vend puts on every policy it creates. vend changes only policies that carry it (its IAM
/// policy keys SCP writes on it too), so a policy someone else made is never taken over, whatever its
/// name.
pub const MANAGED_BY: (&str, &str) = ("vend:managed-by", "vend");

/// Whether the policy carries [`MANAGED_BY`]: vend made it.
pub async fn managed_by_vend(orgs: &dyn Organizations, policy_id: &str) -> Result<bool, AwsError> {
    let (key, value) = MANAGED_BY;
    Ok(orgs
        .tags_of(policy_id)
        .await?
        .iter()
        .any(|(k, v)| k == key && v == value))
}

/// What vend needs from Organizations, in its own terms. A trait so tests can interpose on the real
/// service (e.g. crash right after `create_account` returns) without faking it.
#[async_trait]
pub trait Organizations: Send + Sync {
    /// The organization's id; a clear error if the account is not in one.
    async fn organization_id(&self) -> Result<String, AwsError>;
    /// The root's id and whether SCPs are enabled on it.
    async fn root(&self) -> Result<(String, bool), AwsError>;
    async fn enable_scps(&self, root_id: &str) -> Result<(), AwsError>;
    async fn find_ou(&self, parent_id: &str, name: &str) -> Result<Option<String>, AwsError>;
    async fn create_ou(&self, parent_id: &str, name: &str) -> Result<String, AwsError>;
    async fn list_scps(&self) -> Result<Vec<PolicySummary>, AwsError>;
    async fn scp_content(&self, policy_id: &str) -> Result<String, AwsError>;
    async fn create_scp(
        &self,
        name: &str,
        description: &str,
        content: &str,
    ) -> Result<String, AwsError>;
    async fn update_scp(&self, policy_id: &str, content: &str) -> Result<(), AwsError>;
    async fn scps_attached_to(&self, target_id: &str) -> Result<Vec<String>, AwsError>;
    async fn attach_scp(&self, policy_id: &str, target_id: &str) -> Result<(), AwsError>;

    /// Every account of the organization: O(n) pages, for the periodic index sync only.
    async fn list_accounts(&self) -> Result<Vec<Account>, AwsError>;
    /// Accounts with this root e-mail or this name. O(accounts in the organization): only for
    /// recovering from an unknown outcome.
    async fn find_accounts(&self, email: &str, name: &str) -> Result<Vec<Account>, AwsError>;
    /// The tags of an account, OU or policy (`ListTagsForResource`).
    async fn tags_of(&self, resource_id: &str) -> Result<Vec<(String, String)>, AwsError>;
    /// O(recent requests): the newest in-progress or succeeded request for this account name.
    async fn find_create_request(
        &self,
        account_name: &str,
    ) -> Result<Option<CreateRequest>, AwsError>;
    async fn create_account(
        &self,
        email: &str,
        account_name: &str,
        tags: &[(String, String)],
    ) -> Result<CreateRequest, AwsError>;
    async fn describe_create_request(&self, request_id: &str) -> Result<CreateRequest, AwsError>;
    async fn tag_account(
        &self,
        account_id: &str,
        tags: &[(String, String)],
    ) -> Result<(), AwsError>;
    async fn parent_of(&self, account_id: &str) -> Result<String, AwsError>;
    async fn move_account(&self, account_id: &str, from: &str, to: &str) -> Result<(), AwsError>;
    /// The account's status (`ACTIVE`, `SUSPENDED`, `PENDING_CLOSURE`); `None` if the organization
    /// does not have it (any more).
    async fn account_status(&self, account_id: &str) -> Result<Option<String>, AwsError>;
    /// `CloseAccount`. An account already closed counts as done.
    async fn close_account(&self, account_id: &str) -> Result<(), AwsError>;
}

pub struct SdkOrganizations {
    aws: Aws,
    client: Client,
}

impl SdkOrganizations {
    pub fn new(aws: Aws) -> Self {
        let client = Client::new(&aws.sdk);
        Self { aws, client }
    }

    /// Every account of the organization: O(n) pages.
    async fn all_accounts(&self) -> Result<Vec<Account>, AwsError> {
        collect_pages(|token| async move {
            let out = self
                .aws
                .call(
                    "organizations.ListAccounts",
                    self.client.list_accounts().set_next_token(token).send(),
                )
                .await?;
            let items = out.accounts().iter().map(account).collect();
            Ok((items, out.next_token().map(str::to_owned)))
        })
        .await
    }
}

/// Every item of a paged listing, each page one budgeted `Aws::call` (the SDK's paginators would
/// send their pages past the rate budget). `page(token)` fetches one page: its items and the next
/// token.
async fn collect_pages<T, F, Fut>(mut page: F) -> Result<Vec<T>, AwsError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, Option<String>), AwsError>>,
{
    let mut all = Vec::new();
    let mut token = None;
    loop {
        let (items, next) = page(token).await?;
        all.extend(items);
        match next {
            Some(t) => token = Some(t),
            None => return Ok(all),
        }
    }
}

fn tags(tags: &[(String, String)]) -> Result<Vec<Tag>, AwsError> {
    tags.iter()
        .map(|(k, v)| {
            Tag::builder()
                .key(k)
                .value(v)
                .build()
                .map_err(|e| AwsError::new(ErrorClass::Permanent, "InvalidTag", e.to_string()))
        })
        .collect()
}

fn account(a: &aws_sdk_organizations::types::Account) -> Account {
    Account {
        id: a.id().unwrap_or_default().to_owned(),
        email: a.email().unwrap_or_default().to_owned(),
        name: a.name().unwrap_or_default().to_owned(),
        status: a
            .status()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default(),
    }
}

fn request(s: &CreateAccountStatus) -> CreateRequest {
    let state = match s.state() {
        Some(CreateAccountState::Succeeded) => CreateState::Succeeded {
            account_id: s.account_id().unwrap_or_default().to_owned(),
        },
        Some(CreateAccountState::Failed) => CreateState::Failed {
            reason: s
                .failure_reason()
                .map(|r| r.as_str().to_owned())
                .unwrap_or_else(|| "UNKNOWN".into()),
        },
        _ => CreateState::InProgress,
    };
    let took = match (s.requested_timestamp(), s.completed_timestamp()) {
        (Some(r), Some(c)) if !matches!(state, CreateState::InProgress) => {
            let secs = c.as_secs_f64() - r.as_secs_f64();
            (secs.is_finite() && secs >= 0.0).then(|| std::time::Duration::from_secs_f64(secs))
        }
        _ => None,
    };
    CreateRequest {
        id: s.id().unwrap_or_default().to_owned(),
        account_name: s.account_name().unwrap_or_default().to_owned(),
        state,
        took,
    }
}

/// `CLOSE_ACCOUNT_QUOTA_EXCEEDED` (and the rate of closures) are a quota to wait out, not a failure.
fn close_account_error(
    err: SdkError<
        aws_sdk_organizations::operation::close_account::CloseAccountError,
        aws_smithy_runtime_api::client::orchestrator::HttpResponse,
    >,
) -> AwsError {
    use aws_sdk_organizations::operation::close_account::CloseAccountError;
    if let SdkError::ServiceError(s) = &err
        && let CloseAccountError::ConstraintViolationException(c) = s.err()
    {
        let reason = c
            .reason()
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default();
        let message = c.message().unwrap_or("constraint violation").to_owned();
        if reason.starts_with("CLOSE_ACCOUNT") {
            let mut e = AwsError::new(ErrorClass::Throttled, reason, message);
            e.retry_after = Some(std::time::Duration::from_secs(3600));
            return e;
        }
        let code = if reason.is_empty() {
            "ConstraintViolationException".to_owned()
        } else {
            reason
        };
        return AwsError::new(ErrorClass::Permanent, code, message);
    }
    err.into()
}

/// `ConstraintViolationException` carries a reason that decides its class: the daily creation cap is
/// pacing (throttled), a full organization is for ops (permanent).
fn create_account_error(
    err: SdkError<CreateAccountError, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
) -> AwsError {
    if let SdkError::ServiceError(s) = &err
        && let CreateAccountError::ConstraintViolationException(c) = s.err()
    {
        let reason = c
            .reason()
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default();
        let message = c.message().unwrap_or("constraint violation").to_owned();
        let class = match reason.as_str() {
            "ACCOUNT_CREATION_RATE_LIMIT_EXCEEDED" => ErrorClass::Throttled,
            "ACCOUNT_CREATION_NOT_COMPLETE" => ErrorClass::Transient,
            _ => ErrorClass::Permanent,
        };
        let code = if reason.is_empty() {
            "ConstraintViolationException".to_owned()
        } else {
            reason
        };
        let mut e = AwsError::new(class, code, message);
        if class == ErrorClass::Throttled {
            // A daily cap: there is no point asking again within the hour.
            e.retry_after = Some(std::time::Duration::from_secs(3600));
        }
        return e;
    }
    err.into()
}

#[async_trait]
impl Organizations for SdkOrganizations {
    async fn organization_id(&self) -> Result<String, AwsError> {
        let out = self
            .aws
            .call("organizations.DescribeOrganization", self.client.describe_organization().send())
            .await
            .map_err(|e| {
                if e.code == "AWSOrganizationsNotInUseException" {
                    AwsError::new(
                        ErrorClass::Permanent,
                        e.code.clone(),
                        "the AWS account vend runs as is not in an AWS Organization; create one (all features) in the management account",
                    )
                } else {
                    e
                }
            })?;
        Ok(out
            .organization()
            .and_then(|o| o.id())
            .unwrap_or_default()
            .to_owned())
    }

    async fn root(&self) -> Result<(String, bool), AwsError> {
        let out = self
            .aws
            .call("organizations.ListRoots", self.client.list_roots().send())
            .await?;
        let root = out.roots().first().ok_or_else(|| {
            AwsError::new(
                ErrorClass::Permanent,
                "NoRoot",
                "the organization has no root",
            )
        })?;
        let scps = root.policy_types().iter().any(|p| {
            p.r#type() == Some(&PolicyType::ServiceControlPolicy)
                && p.status().is_some_and(|s| s.as_str() == "ENABLED")
        });
        Ok((root.id().unwrap_or_default().to_owned(), scps))
    }

    async fn enable_scps(&self, root_id: &str) -> Result<(), AwsError> {
        let r = self
            .aws
            .call(
                "organizations.EnablePolicyType",
                self.client
                    .enable_policy_type()
                    .root_id(root_id)
                    .policy_type(PolicyType::ServiceControlPolicy)
                    .send(),
            )
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.code == "PolicyTypeAlreadyEnabledException" => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn find_ou(&self, parent_id: &str, name: &str) -> Result<Option<String>, AwsError> {
        let ous = collect_pages(|token| async move {
            let out = self
                .aws
                .call(
                    "organizations.ListOrganizationalUnitsForParent",
                    self.client
                        .list_organizational_units_for_parent()
                        .parent_id(parent_id)
                        .set_next_token(token)
                        .send(),
                )
                .await?;
            let items = out
                .organizational_units()
                .iter()
                .map(|o| (o.name().map(str::to_owned), o.id().map(str::to_owned)))
                .collect();
            Ok((items, out.next_token().map(str::to_owned)))
        })
        .await?;
        Ok(ous
            .into_iter()
            .find(|(n, _)| n.as_deref() == Some(name))
            .and_then(|(_, id)| id))
    }

    async fn create_ou(&self, parent_id: &str, name: &str) -> Result<String, AwsError> {
        let out = self
            .aws
            .call(
                "organizations.CreateOrganizationalUnit",
                self.client
                    .create_organizational_unit()
                    .parent_id(parent_id)
                    .name(name)
                    .send(),
            )
            .await?;
        Ok(out
            .organizational_unit()
            .and_then(|o| o.id())
            .unwrap_or_default()
            .to_owned())
    }

    async fn list_scps(&self) -> Result<Vec<PolicySummary>, AwsError> {
        collect_pages(|token| async move {
            let out = self
                .aws
                .call(
                    "organizations.ListPolicies",
                    self.client
                        .list_policies()
                        .filter(PolicyType::ServiceControlPolicy)
                        .set_next_token(token)
                        .send(),
                )
                .await?;
            let items = out
                .policies()
                .iter()
                .map(|p| PolicySummary {
                    id: p.id().unwrap_or_default().to_owned(),
                    name: p.name().unwrap_or_default().to_owned(),
                })
                .collect();
            Ok((items, out.next_token().map(str::to_owned)))
        })
        .await
    }

    async fn scp_content(&self, policy_id: &str) -> Result<String, AwsError> {
        let out = self
            .aws
            .call(
                "organizations.DescribePolicy",
                self.client.describe_policy().policy_id(policy_id).send(),
            )
            .await?;
        Ok(out
            .policy()
            .and_then(|p| p.content())
            .unwrap_or_default()
            .to_owned())
    }

    async fn create_scp(
        &self,
        name: &str,
        description: &str,
        content: &str,
    ) -> Result<String, AwsError> {
        let out = self
            .aws
            .call(
                "organizations.CreatePolicy",
                self.client
                    .create_policy()
                    .name(name)
                    .description(description)
                    .content(content)
                    .r#type(PolicyType::ServiceControlPolicy)
                    // What vend's IAM policy keys its SCP writes on: only its own policies.
                    .tags(
                        Tag::builder()
                            .key(MANAGED_BY.0)
                            .value(MANAGED_BY.1)
                            .build()
                            .map_err(|e| {
                                AwsError::new(ErrorClass::Permanent, "InvalidTag", e.to_string())
                            })?,
                    )
                    .send(),
            )
            .await?;
        Ok(out
            .policy()
            .and_then(|p| p.policy_summary())
            .and_then(|s| s.id())
            .unwrap_or_default()
            .to_owned())
    }

    async fn update_scp(&self, policy_id: &str, content: &str) -> Result<(), AwsError> {
        self.aws
            .call(
                "organizations.UpdatePolicy",
                self.client
                    .update_policy()
                    .policy_id(policy_id)
                    .content(content)
                    .send(),
            )
            .await
            .map(|_| ())
    }

    async fn scps_attached_to(&self, target_id: &str) -> Result<Vec<String>, AwsError> {
        collect_pages(|token| async move {
            let out = self
                .aws
                .call(
                    "organizations.ListPoliciesForTarget",
                    self.client
                        .list_policies_for_target()
                        .target_id(target_id)
                        .filter(PolicyType::ServiceControlPolicy)
                        .set_next_token(token)
                        .send(),
                )
                .await?;
            let items = out
                .policies()
                .iter()
                .filter_map(|p| p.id().map(str::to_owned))
                .collect();
            Ok((items, out.next_token().map(str::to_owned)))
        })
        .await
    }

    async fn attach_scp(&self, policy_id: &str, target_id: &str) -> Result<(), AwsError> {
        let r = self
            .aws
            .call(
                "organizations.AttachPolicy",
                self.client
                    .attach_policy()
                    .policy_id(policy_id)
                    .target_id(target_id)
                    .send(),
            )
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.code == "DuplicatePolicyAttachmentException" => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn list_accounts(&self) -> Result<Vec<Account>, AwsError> {
        self.all_accounts().await
    }

    async fn find_accounts(&self, email: &str, name: &str) -> Result<Vec<Account>, AwsError> {
        let mut all = self.all_accounts().await?;
        all.retain(|a| a.email.eq_ignore_ascii_case(email) || a.name == name);
        Ok(all)
    }

    async fn tags_of(&self, resource_id: &str) -> Result<Vec<(String, String)>, AwsError> {
        collect_pages(|token| async move {
            let out = self
                .aws
                .call(
                    "organizations.ListTagsForResource",
                    self.client
                        .list_tags_for_resource()
                        .resource_id(resource_id)
                        .set_next_token(token)
                        .send(),
                )
                .await?;
            let items = out
                .tags()
                .iter()
                .map(|t| (t.key().to_owned(), t.value().to_owned()))
                .collect();
            Ok((items, out.next_token().map(str::to_owned)))
        })
        .await
    }
    async fn find_create_request(
        &self,
        account_name: &str,
    ) -> Result<Option<CreateRequest>, AwsError> {
        let statuses = collect_pages(|token| async move {
            let out = self
                .aws
                .call(
                    "organizations.ListCreateAccountStatus",
                    self.client
                        .list_create_account_status()
                        .states(CreateAccountState::InProgress)
                        .states(CreateAccountState::Succeeded)
                        .set_next_token(token)
                        .send(),
                )
                .await?;
            let items = out
                .create_account_statuses()
                .iter()
                .filter(|s| s.account_name() == Some(account_name))
                .map(|s| (s.requested_timestamp().copied(), request(s)))
                .collect();
            Ok((items, out.next_token().map(str::to_owned)))
        })
        .await?;
        // The newest request for the name that has not failed.
        Ok(statuses
            .into_iter()
            .filter(|(_, r)| !matches!(r.state, CreateState::Failed { .. }))
            .max_by(|(a, _), (b, _)| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal))
            .map(|(_, r)| r))
    }

    async fn create_account(
        &self,
        email: &str,
        account_name: &str,
        tag_list: &[(String, String)],
    ) -> Result<CreateRequest, AwsError> {
        let out = self
            .aws
            .call("organizations.CreateAccount", async {
                self.client
                    .create_account()
                    .email(email)
                    .account_name(account_name)
                    .set_tags(Some(tags(tag_list)?))
                    .send()
                    .await
                    .map_err(create_account_error)
            })
            .await?;
        out.create_account_status().map(request).ok_or_else(|| {
            AwsError::new(
                ErrorClass::Transient,
                "EmptyResponse",
                "CreateAccount returned no status",
            )
        })
    }

    async fn describe_create_request(&self, request_id: &str) -> Result<CreateRequest, AwsError> {
        let out = self
            .aws
            .call(
                "organizations.DescribeCreateAccountStatus",
                self.client
                    .describe_create_account_status()
                    .create_account_request_id(request_id)
                    .send(),
            )
            .await?;
        out.create_account_status().map(request).ok_or_else(|| {
            AwsError::new(
                ErrorClass::Transient,
                "EmptyResponse",
                "DescribeCreateAccountStatus returned no status",
            )
        })
    }

    async fn tag_account(
        &self,
        account_id: &str,
        tag_list: &[(String, String)],
    ) -> Result<(), AwsError> {
        self.aws
            .call("organizations.TagResource", async {
                self.client
                    .tag_resource()
                    .resource_id(account_id)
                    .set_tags(Some(tags(tag_list)?))
                    .send()
                    .await
                    .map_err(AwsError::from)
            })
            .await
            .map(|_| ())
    }

    async fn parent_of(&self, account_id: &str) -> Result<String, AwsError> {
        let out = self
            .aws
            .call(
                "organizations.ListParents",
                self.client.list_parents().child_id(account_id).send(),
            )
            .await?;
        out.parents()
            .first()
            .and_then(|p| p.id())
            .map(str::to_owned)
            .ok_or_else(|| {
                AwsError::new(
                    ErrorClass::Transient,
                    "NoParent",
                    "the account has no parent yet",
                )
            })
    }

    async fn move_account(&self, account_id: &str, from: &str, to: &str) -> Result<(), AwsError> {
        let r = self
            .aws
            .call(
                "organizations.MoveAccount",
                self.client
                    .move_account()
                    .account_id(account_id)
                    .source_parent_id(from)
                    .destination_parent_id(to)
                    .send(),
            )
            .await;
        match r {
            // Already there: a move that happened before a crash.
            Err(e) if e.code == "DuplicateAccountException" => Ok(()),
            other => other.map(|_| ()),
        }
    }

    async fn account_status(&self, account_id: &str) -> Result<Option<String>, AwsError> {
        let r = self
            .aws
            .call(
                "organizations.DescribeAccount",
                self.client.describe_account().account_id(account_id).send(),
            )
            .await;
        match r {
            Ok(out) => Ok(Some(
                out.account()
                    .and_then(|a| a.status())
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
            )),
            Err(e) if e.code == "AccountNotFoundException" => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn close_account(&self, account_id: &str) -> Result<(), AwsError> {
        let r = self
            .aws
            .call("organizations.CloseAccount", async {
                self.client
                    .close_account()
                    .account_id(account_id)
                    .send()
                    .await
                    .map_err(close_account_error)
            })
            .await;
        match r {
            // Closed before (a crash after the call, or an operator in the console).
            Err(e) if e.code == "AccountAlreadyClosedException" => Ok(()),
            other => other.map(|_| ()),
        }
    }
}

/// A readable explanation of a `CreateAccount` `FailureReason`, and whether a new request could work.
pub fn failure_reason(reason: &str) -> (ErrorClass, &'static str) {
    use CreateAccountFailureReason as R;
    let r = R::from(reason);
    match r {
        R::EmailAlreadyExists => (
            ErrorClass::Transient,
            "an AWS account with this root e-mail already exists",
        ),
        R::ConcurrentAccountModification => (
            ErrorClass::Transient,
            "a request with the same information is already being processed",
        ),
        R::InternalFailure => (
            ErrorClass::Transient,
            "AWS had an internal failure creating the account",
        ),
        R::AccountLimitExceeded => (
            ErrorClass::Permanent,
            "the organization has reached its account limit; raise the quota, then retry",
        ),
        R::InvalidAddress => (ErrorClass::Permanent, "AWS rejected the account's address"),
        R::InvalidEmail => (
            ErrorClass::Permanent,
            "AWS rejected the account's root e-mail",
        ),
        R::InvalidIdentityForBusinessValidation
        | R::FailedBusinessValidation
        | R::PendingBusinessValidatioNv
        | R::MissingBusinessValidation
        | R::UnknownBusinessValidation => (
            ErrorClass::Permanent,
            "the organization's business validation does not allow new accounts; see the AWS console",
        ),
        R::MissingPaymentInstrument => (
            ErrorClass::Permanent,
            "the management account has no valid payment instrument",
        ),
        R::GovcloudAccountAlreadyExists => (
            ErrorClass::Permanent,
            "a GovCloud account for this account already exists",
        ),
        R::UpdateExistingResourcePolicyWithTagsNotSupported => (
            ErrorClass::Permanent,
            "AWS cannot apply these tags to the new account",
        ),
        _ => (ErrorClass::Permanent, "AWS could not create the account"),
    }
}
