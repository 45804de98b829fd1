//! A moto server per test (it emulates every AWS API vend drives, with per-account isolation after
//! AssumeRole), on a free loopback port, killed when the test ends or the test process dies.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;

use super::postgres::{free_port, on_exit, repo_root};

pub const REGION: &str = "us-east-1";
/// A second region tenants may ask for (data residency).
pub const OTHER_REGION: &str = "eu-west-1";
pub const BASE_DOMAIN: &str = "tenants.example.test";
pub const CERTIFICATE_ARN: &str = "arn:aws:acm:us-east-1:123456789012:certificate/vend-test";

pub struct Moto {
    pub url: String,
    child: Child,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_binary() -> PathBuf {
    if let Ok(p) = std::env::var("VEND_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let p = repo_root().join(".venv/bin/moto_server");
    assert!(
        p.exists(),
        "moto is not installed: run scripts/test (it installs moto[server] into .venv), or set VEND_MOTO_SERVER"
    );
    p
}

/// Starts moto on a free loopback port and waits until it answers.
pub async fn start() -> Moto {
    start_with(&[]).await
}

/// As [`start`], with moto's own settings in its environment (e.g. `MOTO_ACM_VALIDATION_WAIT`).
pub async fn start_with(env: &[(&str, &str)]) -> Moto {
    let http = reqwest::Client::new();
    // A port taken between choosing and binding it makes moto exit; then another port is tried.
    for _ in 0..5 {
        let port = free_port();
        let mut child = Command::new(moto_binary())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        on_exit(&format!("kill {} 2>/dev/null", child.id()));
        let url = format!("http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if child.try_wait().expect("polling moto_server").is_some() {
                break;
            }
            // Only moto answers its own dashboard with a success; anything else is not it.
            if let Ok(r) = http.get(format!("{url}/moto-api/")).send().await
                && r.status().is_success()
            {
                return Moto { url, child };
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "moto did not start on {url}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    panic!("moto_server exited at start five times (ports taken?)");
}

/// SDK configuration for the management account, pointed at `url`.
pub async fn sdk(url: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(url)
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .retry_config(
            aws_config::retry::RetryConfig::standard()
                .with_max_attempts(vend::aws::SDK_MAX_ATTEMPTS),
        )
        .load()
        .await
}

/// SDK configuration inside `account_id`, through its access role (as an operator would check).
pub async fn sdk_in(base: &SdkConfig, account_id: &str) -> SdkConfig {
    let sts = aws_sdk_sts::Client::new(base);
    let c = sts
        .assume_role()
        .role_arn(format!(
            "arn:aws:iam::{account_id}:role/OrganizationAccountAccessRole"
        ))
        .role_session_name("test")
        .send()
        .await
        .unwrap();
    let c = c.credentials().unwrap();
    base.to_builder()
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(Credentials::new(
                c.access_key_id(),
                c.secret_access_key(),
                Some(c.session_token().to_owned()),
                None,
                "test-assumed",
            )),
        )
        .build()
}

/// EC2 in `region` as `sdk` sees it.
pub fn ec2_in(sdk: &SdkConfig, region: &str) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(
        &sdk.to_builder()
            .region(aws_config::Region::new(region.to_owned()))
            .build(),
    )
}

/// The default VPC ids of `region` inside the account `sdk` acts in.
pub async fn default_vpcs(sdk: &SdkConfig, region: &str) -> Vec<String> {
    ec2_in(sdk, region)
        .describe_vpcs()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("is-default")
                .values("true")
                .build(),
        )
        .send()
        .await
        .unwrap()
        .vpcs()
        .iter()
        .filter_map(|v| v.vpc_id().map(str::to_owned))
        .collect()
}

/// The regions of the commercial partition moto has enabled for the account `sdk` acts in, each with
/// a default VPC (moto lists other partitions' regions too; AWS lists only the caller's).
pub async fn enabled_regions(sdk: &SdkConfig) -> Vec<String> {
    ec2_in(sdk, REGION)
        .describe_regions()
        .send()
        .await
        .unwrap()
        .regions()
        .iter()
        .filter(|r| r.opt_in_status() != Some("not-opted-in"))
        .filter_map(|r| r.region_name().map(str::to_owned))
        .filter(|r| !r.starts_with("cn-") && !r.starts_with("us-gov-"))
        .collect()
}

/// The id of the base domain's hosted zone.
pub async fn base_zone_id(r53: &aws_sdk_route53::Client) -> String {
    r53.list_hosted_zones_by_name()
        .dns_name(BASE_DOMAIN)
        .send()
        .await
        .unwrap()
        .hosted_zones()[0]
        .id()
        .to_owned()
}

/// What vend expects to exist before it starts: an organization, and the public zone of the base domain.
pub async fn prepare_management(sdk: &SdkConfig) {
    let org = aws_sdk_organizations::Client::new(sdk);
    org.create_organization()
        .feature_set(aws_sdk_organizations::types::OrganizationFeatureSet::All)
        .send()
        .await
        .unwrap();
    aws_sdk_route53::Client::new(sdk)
        .create_hosted_zone()
        .name(BASE_DOMAIN)
        .caller_reference("vend-test")
        .send()
        .await
        .unwrap();
}

pub async fn tagged_accounts(sdk: &SdkConfig) -> Vec<(String, String)> {
    let org = aws_sdk_organizations::Client::new(sdk);
    let mut out = Vec::new();
    for a in org.list_accounts().send().await.unwrap().accounts() {
        let id = a.id().unwrap().to_owned();
        for t in org
            .list_tags_for_resource()
            .resource_id(&id)
            .send()
            .await
            .unwrap()
            .tags()
        {
            if t.key() == "vend:tenant" {
                out.push((t.value().to_owned(), id.clone()));
            }
        }
    }
    out.sort();
    out
}

/// One account per tenant, and in it one stack per name, one domain, and one record per tenant.
pub async fn assert_exactly_one_of_everything(sdk: &SdkConfig, slugs: &[String]) {
    let accounts = tagged_accounts(sdk).await;
    let tenants: Vec<&str> = accounts.iter().map(|(s, _)| s.as_str()).collect();
    let mut expected: Vec<&str> = slugs.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(tenants, expected, "exactly one account per tenant");
    let org = aws_sdk_organizations::Client::new(sdk);
    assert_eq!(
        org.list_accounts().send().await.unwrap().accounts().len(),
        slugs.len() + 1,
        "no untagged strays either"
    );
    for (slug, account) in &accounts {
        let inside = sdk_in(sdk, account).await;
        let domains = aws_sdk_apigateway::Client::new(&inside)
            .get_domain_names()
            .send()
            .await
            .unwrap();
        assert_eq!(domains.items().len(), 1, "{slug}: domains");
        let stacks = aws_sdk_cloudformation::Client::new(&inside)
            .list_stacks()
            .send()
            .await
            .unwrap();
        let live: Vec<&str> = stacks
            .stack_summaries()
            .iter()
            .filter(|s| {
                s.stack_status()
                    .is_some_and(|x| x.as_str() != "DELETE_COMPLETE")
            })
            .map(|s| s.stack_name().unwrap())
            .collect();
        assert_eq!(live.len(), 2, "{slug}: stacks {live:?}");
        let apis = aws_sdk_apigateway::Client::new(&inside)
            .get_rest_apis()
            .send()
            .await
            .unwrap();
        assert_eq!(apis.items().len(), 1, "{slug}: APIs");
        assert_eq!(
            default_vpcs(&inside, REGION).await,
            Vec::<String>::new(),
            "{slug}: default VPC left"
        );
    }
    let r53 = aws_sdk_route53::Client::new(sdk);
    let zone = base_zone_id(&r53).await;
    let records = r53
        .list_resource_record_sets()
        .hosted_zone_id(&zone)
        .send()
        .await
        .unwrap();
    for slug in slugs {
        let n = records
            .resource_record_sets()
            .iter()
            .filter(|r| r.name() == format!("{slug}.{BASE_DOMAIN}."))
            .count();
        assert_eq!(n, 1, "{slug}: records");
    }
}

/// The tenant account's certificates for `domain`, with their status.
pub async fn certificates_in(inside: &SdkConfig, domain: &str) -> Vec<(String, String)> {
    aws_sdk_acm::Client::new(inside)
        .list_certificates()
        .send()
        .await
        .unwrap()
        .certificate_summary_list()
        .iter()
        .filter(|c| c.domain_name() == Some(domain))
        .map(|c| {
            (
                c.certificate_arn().unwrap().to_owned(),
                c.status()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

/// The certificate the API Gateway custom domain `domain` of the tenant account serves with.
pub async fn domain_certificate(inside: &SdkConfig, domain: &str) -> Option<String> {
    aws_sdk_apigateway::Client::new(inside)
        .get_domain_name()
        .domain_name(domain)
        .send()
        .await
        .unwrap()
        .regional_certificate_arn()
        .map(str::to_owned)
}

/// Deletes the tenant account's custom domain `domain`, as a person in the console might.
pub async fn delete_domain(inside: &SdkConfig, domain: &str) {
    aws_sdk_apigateway::Client::new(inside)
        .delete_domain_name()
        .domain_name(domain)
        .send()
        .await
        .unwrap();
}

/// Asserts that the tenant account has exactly one certificate for `domain`, that the tenant (as the ops
/// API shows it) recorded it and that the custom domain serves with it; returns its ARN.
pub async fn the_one_certificate(
    inside: &SdkConfig,
    domain: &str,
    tenant: &serde_json::Value,
) -> String {
    let certs: Vec<String> = certificates_in(inside, domain)
        .await
        .into_iter()
        .map(|(arn, _)| arn)
        .collect();
    assert_eq!(certs.len(), 1, "{certs:?}");
    assert_eq!(tenant["resources"]["certificate_arn"], certs[0].as_str());
    assert_eq!(
        domain_certificate(inside, domain).await.as_deref(),
        Some(certs[0].as_str())
    );
    certs[0].clone()
}

/// The template body of stack `name` in `account` (empty if it has none).
pub async fn stack_template(base: &SdkConfig, account: &str, name: &str) -> String {
    let inside = sdk_in(base, account).await;
    aws_sdk_cloudformation::Client::new(&inside)
        .get_template()
        .stack_name(name)
        .send()
        .await
        .unwrap()
        .template_body()
        .unwrap_or_default()
        .to_owned()
}

/// The id of the one OU under the organization's root (vend's tenant OU).
pub async fn tenant_ou_id(org: &aws_sdk_organizations::Client) -> String {
    let roots = org.list_roots().send().await.unwrap();
    let ous = org
        .list_organizational_units_for_parent()
        .parent_id(roots.roots()[0].id().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(ous.organizational_units().len(), 1, "one tenant OU");
    ous.organizational_units()[0].id().unwrap().to_owned()
}

/// The central zone's records named `name` (with or without the trailing dot).
pub async fn records_named(
    sdk: &SdkConfig,
    name: &str,
) -> Vec<aws_sdk_route53::types::ResourceRecordSet> {
    let name = format!("{}.", name.trim_end_matches('.'));
    all_records(sdk)
        .await
        .into_iter()
        .filter(|r| r.name() == name)
        .collect()
}

/// Deletes the central zone's record `name`, as someone outside vend would; returns it.
pub async fn delete_record(
    sdk: &SdkConfig,
    name: &str,
) -> aws_sdk_route53::types::ResourceRecordSet {
    use aws_sdk_route53::types::{Change, ChangeAction, ChangeBatch};
    let record = records_named(sdk, name).await.remove(0);
    let r53 = aws_sdk_route53::Client::new(sdk);
    let zone = base_zone_id(&r53).await;
    r53.change_resource_record_sets()
        .hosted_zone_id(&zone)
        .change_batch(
            ChangeBatch::builder()
                .changes(
                    Change::builder()
                        .action(ChangeAction::Delete)
                        .resource_record_set(record.clone())
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    record
}

/// How many records the central zone holds.
pub async fn record_count(sdk: &SdkConfig) -> usize {
    all_records(sdk).await.len()
}

async fn all_records(sdk: &SdkConfig) -> Vec<aws_sdk_route53::types::ResourceRecordSet> {
    let r53 = aws_sdk_route53::Client::new(sdk);
    let zone = base_zone_id(&r53).await;
    r53.list_resource_record_sets()
        .hosted_zone_id(&zone)
        .send()
        .await
        .unwrap()
        .resource_record_sets()
        .to_vec()
}

/// The account's parent (OU or root) in the organization.
pub async fn parent_of(org: &aws_sdk_organizations::Client, account: &str) -> String {
    org.list_parents()
        .child_id(account)
        .send()
        .await
        .unwrap()
        .parents()[0]
        .id()
        .unwrap()
        .to_owned()
}

/// The status of the stack `name` in the account `inside` speaks for, if it exists.
pub async fn stack_status(inside: &SdkConfig, name: &str) -> Option<String> {
    aws_sdk_cloudformation::Client::new(inside)
        .describe_stacks()
        .stack_name(name)
        .send()
        .await
        .ok()?
        .stacks()
        .first()?
        .stack_status()
        .map(|s| s.as_str().to_owned())
}

/// The APIs the custom domain `domain` maps to, in the account `inside` speaks for (none if the
/// domain does not exist).
pub async fn mapped_apis(inside: &SdkConfig, domain: &str) -> Vec<String> {
    aws_sdk_apigateway::Client::new(inside)
        .get_base_path_mappings()
        .domain_name(domain)
        .send()
        .await
        .map(|m| {
            m.items()
                .iter()
                .filter_map(|i| i.rest_api_id().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// An account made in the organization directly (as a person would, without vend's tags); its id.
pub async fn create_account(sdk: &SdkConfig, email: &str, name: &str) -> String {
    let org = aws_sdk_organizations::Client::new(sdk);
    let made = org
        .create_account()
        .email(email)
        .account_name(name)
        .send()
        .await
        .unwrap();
    let request = made
        .create_account_status()
        .unwrap()
        .id()
        .unwrap()
        .to_owned();
    org.describe_create_account_status()
        .create_account_request_id(&request)
        .send()
        .await
        .unwrap()
        .create_account_status()
        .unwrap()
        .account_id()
        .unwrap()
        .to_owned()
}

/// The account's status in the organization (`ACTIVE`, `SUSPENDED`, `PENDING_CLOSURE`).
pub async fn account_status(sdk: &SdkConfig, account: &str) -> String {
    aws_sdk_organizations::Client::new(sdk)
        .describe_account()
        .account_id(account)
        .send()
        .await
        .unwrap()
        .account()
        .unwrap()
        .status()
        .unwrap()
        .as_str()
        .to_owned()
}
