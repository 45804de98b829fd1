//! The Account API inside a tenant account: its alternate contacts (billing, operations, security),
//! which AWS writes to about the account instead of (or besides) the root e-mail, and its opt-in
//! regions (a tenant living in one needs it enabled before anything is made there).

use aws_sdk_account::Client;
use aws_sdk_account::types::{AlternateContactType, RegionOptStatus};

use super::{Aws, AwsError};
use crate::config::{AlternateContact, ContactKind};

pub struct Account {
    aws: Aws,
    client: Client,
}

impl Account {
    /// The Account API as `aws` (scoped to a tenant account) sees it: calls name no account, so they
    /// act on the caller's own, which needs no trusted access in the organization.
    pub fn new(aws: &Aws) -> Self {
        Self {
            aws: aws.clone(),
            client: Client::new(&aws.sdk),
        }
    }

    /// Sets one alternate contact; a repeat with the same values changes nothing.
    pub async fn put_alternate_contact(&self, c: &AlternateContact) -> Result<(), AwsError> {
        self.aws
            .call(
                "account.PutAlternateContact",
                self.client
                    .put_alternate_contact()
                    .alternate_contact_type(kind(c.kind))
                    .name(&c.name)
                    .title(&c.title)
                    .email_address(&c.email)
                    .phone_number(&c.phone)
                    .send(),
            )
            .await
            .map(|_| ())
    }
}

/// Where enabling an opt-in region stands for the account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionState {
    Enabled,
    /// AWS is enabling it (minutes, sometimes hours).
    Enabling,
    Disabled,
    /// AWS is disabling it: it cannot be enabled until that is done.
    Disabling,
}

impl Account {
    /// Whether the account has `region` on.
    pub async fn region_state(&self, region: &str) -> Result<RegionState, AwsError> {
        let out = self
            .aws
            .call(
                "account.GetRegionOptStatus",
                self.client
                    .get_region_opt_status()
                    .region_name(region)
                    .send(),
            )
            .await?;
        Ok(match out.region_opt_status() {
            Some(RegionOptStatus::Enabled | RegionOptStatus::EnabledByDefault) => {
                RegionState::Enabled
            }
            Some(RegionOptStatus::Enabling) => RegionState::Enabling,
            Some(RegionOptStatus::Disabling) => RegionState::Disabling,
            _ => RegionState::Disabled,
        })
    }

    /// Asks AWS to enable `region` for the account; it does so asynchronously. Asking again while
    /// it is enabling changes nothing.
    pub async fn enable_region(&self, region: &str) -> Result<(), AwsError> {
        self.aws
            .call(
                "account.EnableRegion",
                self.client.enable_region().region_name(region).send(),
            )
            .await
            .map(|_| ())
    }
}

fn kind(k: ContactKind) -> AlternateContactType {
    match k {
        ContactKind::Billing => AlternateContactType::Billing,
        ContactKind::Operations => AlternateContactType::Operations,
        ContactKind::Security => AlternateContactType::Security,
    }
}
