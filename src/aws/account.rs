//! The Account API inside a tenant account: its alternate contacts (billing, operations, security),
//! which AWS writes to about the account instead of (or besides) the root e-mail.

use aws_sdk_account::Client;
use aws_sdk_account::types::AlternateContactType;

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

fn kind(k: ContactKind) -> AlternateContactType {
    match k {
        ContactKind::Billing => AlternateContactType::Billing,
        ContactKind::Operations => AlternateContactType::Operations,
        ContactKind::Security => AlternateContactType::Security,
    }
}
