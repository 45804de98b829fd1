//! Reaching into tenant accounts: STS `AssumeRole` into the account's access role, with the credentials
//! cached per account until shortly before they expire (role sessions last an hour at most).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use aws_config::SdkConfig;
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use tokio::sync::Mutex;

use crate::domain::ErrorClass;

use super::{Aws, AwsError};

/// Refresh cached credentials this long before they expire, so no call starts with a dying session.
const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

pub struct Accounts {
    aws: Aws,
    sts: aws_sdk_sts::Client,
    role_name: String,
    cache: Mutex<HashMap<String, (SdkConfig, SystemTime)>>,
}

impl Accounts {
    pub fn new(aws: Aws, role_name: &str) -> Self {
        let sts = aws_sdk_sts::Client::new(&aws.sdk);
        Self {
            aws,
            sts,
            role_name: role_name.to_owned(),
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The account vend itself runs as (the management account).
    pub async fn caller_account(&self) -> Result<String, AwsError> {
        let out = self
            .aws
            .call(
                "sts.GetCallerIdentity",
                self.sts.get_caller_identity().send(),
            )
            .await?;
        Ok(out.account().unwrap_or_default().to_owned())
    }

    pub fn role_name(&self) -> &str {
        &self.role_name
    }

    /// AWS as seen inside `account_id` through its access role, for `tenant`, within that account's
    /// rate budgets.
    pub async fn in_account(&self, account_id: &str, tenant: &str) -> Result<Aws, AwsError> {
        let cfg = self.config_for(account_id, tenant).await?;
        Ok(self.aws.in_account(account_id, cfg))
    }

    /// SDK configuration acting inside `account_id` through its access role. The role session is
    /// named `vend-<tenant>`, so CloudTrail in the tenant's account (and the management account's)
    /// tells whose work each call was. (SourceIdentity would persist further, but the default
    /// `OrganizationAccountAccessRole` does not trust `sts:SetSourceIdentity`, so AWS would refuse.)
    pub async fn config_for(&self, account_id: &str, tenant: &str) -> Result<SdkConfig, AwsError> {
        if let Some((cfg, expires)) = self.cache.lock().await.get(account_id)
            && *expires > SystemTime::now() + REFRESH_MARGIN
        {
            return Ok(cfg.clone());
        }
        let arn = format!("arn:aws:iam::{account_id}:role/{}", self.role_name);
        let out = self
            .aws
            .call(
                "sts.AssumeRole",
                self.sts
                    .assume_role()
                    .role_arn(&arn)
                    .role_session_name(session_name(tenant))
                    .duration_seconds(3600)
                    .send(),
            )
            .await
            .map_err(|e| not_ready(e, &self.role_name))?;
        let c = out.credentials().ok_or_else(|| {
            AwsError::new(
                ErrorClass::Transient,
                "EmptyResponse",
                "AssumeRole returned no credentials",
            )
        })?;
        let expires = SystemTime::try_from(*c.expiration())
            .unwrap_or_else(|_| SystemTime::now() + Duration::from_secs(900));
        let creds = Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_owned()),
            Some(expires),
            "vend-assume-role",
        );
        let cfg = self
            .aws
            .sdk
            .to_builder()
            .credentials_provider(SharedCredentialsProvider::new(creds))
            .build();
        self.cache
            .lock()
            .await
            .insert(account_id.to_owned(), (cfg.clone(), expires));
        Ok(cfg)
    }
}

/// `vend-<tenant>`, within STS's 64 characters of `[\w+=,.@-]`.
fn session_name(tenant: &str) -> String {
    let mut name: String = format!("vend-{tenant}")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(64);
    name
}

/// A brand-new account refuses AssumeRole for its first minutes (AccessDenied, InvalidClientTokenId,
/// STS not yet active in the region): that is waiting, not failing. The step's timeout bounds it.
fn not_ready(e: AwsError, role: &str) -> AwsError {
    match e.code.as_str() {
        "AccessDenied"
        | "AccessDeniedException"
        | "InvalidClientTokenId"
        | "RegionDisabledException" => {
            let mut n = AwsError::new(
                ErrorClass::Transient,
                "AccountNotReady",
                format!(
                    "the account does not accept AssumeRole into {role} yet ({})",
                    e.code
                ),
            );
            n.operation = e.operation;
            n
        }
        _ => e,
    }
}

#[cfg(test)]
mod tests {
    use super::session_name;

    #[test]
    fn role_sessions_are_named_after_their_tenant_within_stss_rules() {
        assert_eq!(session_name("acme"), "vend-acme");
        assert_eq!(session_name(&"a".repeat(80)).len(), 64);
        assert_eq!(session_name("a b:c"), "vend-a-b-c");
    }
}
