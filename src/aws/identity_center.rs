//! IAM Identity Center, from the management account: the ops group's access to a tenant account,
//! through one permission set (`VEND_IDENTITY_CENTER_*`).

use aws_sdk_ssoadmin::Client;
use aws_sdk_ssoadmin::types::{
    AccountAssignmentOperationStatus, PrincipalType, StatusValues, TargetType,
};

use super::{Aws, AwsError};
use crate::config::IdentityCenter;

pub struct Sso {
    aws: Aws,
    client: Client,
    ic: IdentityCenter,
}

/// Where an assignment request stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    InProgress,
    Succeeded,
    Failed(String),
}

/// The six fields that name the assignment, set alike on its create and delete requests.
macro_rules! assignment {
    ($request:expr, $ic:expr, $account:expr) => {
        $request
            .instance_arn(&$ic.instance_arn)
            .target_id($account)
            .target_type(TargetType::AwsAccount)
            .permission_set_arn(&$ic.permission_set_arn)
            .principal_type(PrincipalType::Group)
            .principal_id(&$ic.group_id)
    };
}

impl Sso {
    /// Identity Center for `ic`, called from `management` in Identity Center's home region.
    pub fn new(management: &Aws, ic: IdentityCenter) -> Self {
        let aws = match &ic.region {
            Some(r) => management.in_region(r),
            None => management.clone(),
        };
        Self {
            client: Client::new(&aws.sdk),
            aws,
            ic,
        }
    }

    /// Whether the ops group holds the permission set on `account`.
    pub async fn assigned(&self, account: &str) -> Result<bool, AwsError> {
        let mut next: Option<String> = None;
        loop {
            let out = self
                .aws
                .call(
                    "sso-admin.ListAccountAssignments",
                    self.client
                        .list_account_assignments()
                        .instance_arn(&self.ic.instance_arn)
                        .account_id(account)
                        .permission_set_arn(&self.ic.permission_set_arn)
                        .set_next_token(next.take())
                        .send(),
                )
                .await?;
            if out.account_assignments().iter().any(|a| {
                a.principal_type() == Some(&PrincipalType::Group)
                    && a.principal_id() == Some(self.ic.group_id.as_str())
            }) {
                return Ok(true);
            }
            match out.next_token() {
                Some(t) => next = Some(t.to_owned()),
                None => return Ok(false),
            }
        }
    }

    /// Asks for the assignment; Identity Center makes it asynchronously.
    pub async fn assign(&self, account: &str) -> Result<Request, AwsError> {
        let out = self
            .aws
            .call(
                "sso-admin.CreateAccountAssignment",
                assignment!(self.client.create_account_assignment(), self.ic, account).send(),
            )
            .await?;
        Ok(request(out.account_assignment_creation_status()))
    }

    /// Asks for the assignment's removal; Identity Center removes it asynchronously.
    pub async fn unassign(&self, account: &str) -> Result<Request, AwsError> {
        let out = self
            .aws
            .call(
                "sso-admin.DeleteAccountAssignment",
                assignment!(self.client.delete_account_assignment(), self.ic, account).send(),
            )
            .await?;
        Ok(request(out.account_assignment_deletion_status()))
    }
}

fn request(status: Option<&AccountAssignmentOperationStatus>) -> Request {
    match status.and_then(|s| s.status()) {
        Some(StatusValues::Failed) => Request::Failed(
            status
                .and_then(|s| s.failure_reason())
                .unwrap_or("no reason given")
                .to_owned(),
        ),
        Some(StatusValues::InProgress) => Request::InProgress,
        _ => Request::Succeeded,
    }
}
