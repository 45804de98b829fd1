//! The silo workflow against moto: afterwards, plain SDK calls check what CONTRACT.md says must exist.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use aws_config::SdkConfig;
use reqwest::Method;
use serde_json::Value;
use tokio::sync::Notify;
use vend::aws::AwsError;
use vend::aws::organizations::{
    Account, CreateRequest, Organizations, PolicySummary, SdkOrganizations,
};

use crate::support::moto::{self, BASE_DOMAIN};
use crate::support::{signup_body, spawn_silo};

const WITHIN: Duration = Duration::from_secs(60);

fn scp_names() -> BTreeSet<String> {
    vend::reconcile::load_scps(
        &crate::support::postgres::repo_root().join("scp-policies"),
        &vend::reconcile::ScpVars {
            access_role: "OrganizationAccountAccessRole".into(),
            region: "us-east-1".into(),
            tenant_regions: Vec::new(),
        },
    )
    .unwrap()
    .into_iter()
    .map(|d| d.name)
    .collect()
}

/// Every account of the organization tagged for `slug`.
async fn accounts_of(sdk: &SdkConfig, slug: &str) -> Vec<String> {
    let org = aws_sdk_organizations::Client::new(sdk);
    let mut out = Vec::new();
    for a in org.list_accounts().send().await.unwrap().accounts() {
        let id = a.id().unwrap().to_owned();
        let tags = org
            .list_tags_for_resource()
            .resource_id(&id)
            .send()
            .await
            .unwrap();
        if tags
            .tags()
            .iter()
            .any(|t| t.key() == "vend:tenant" && t.value() == slug)
        {
            out.push(id);
        }
    }
    out
}

/// The checks of CONTRACT.md's silo section, with nothing but the AWS SDK.
pub(crate) async fn assert_contract_holds(sdk: &SdkConfig, slug: &str) -> String {
    let org = aws_sdk_organizations::Client::new(sdk);
    // Exactly one account tagged for the tenant, in the tenant OU, which carries every SCP.
    let accounts = accounts_of(sdk, slug).await;
    assert_eq!(accounts.len(), 1, "{slug} has {} accounts", accounts.len());
    let account = accounts[0].clone();
    let parent = moto::parent_of(&org, &account).await;
    let ou = org
        .describe_organizational_unit()
        .organizational_unit_id(&parent)
        .send()
        .await
        .unwrap();
    assert_eq!(ou.organizational_unit().unwrap().name(), Some("tenants"));
    let attached: BTreeSet<String> = org
        .list_policies_for_target()
        .target_id(&parent)
        .filter(aws_sdk_organizations::types::PolicyType::ServiceControlPolicy)
        .send()
        .await
        .unwrap()
        .policies()
        .iter()
        .filter_map(|p| p.name().map(str::to_owned))
        .collect();
    for name in scp_names() {
        assert!(
            attached.contains(&name),
            "SCP {name} is not attached to the tenant OU"
        );
    }

    // In the tenant account: the baseline roles and the tenant stack, complete and not rolled back.
    let inside = moto::sdk_in(sdk, &account).await;
    let iam = aws_sdk_iam::Client::new(&inside);
    for role in ["vend-deployment", "vend-event-forwarder"] {
        iam.get_role()
            .role_name(role)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{slug}: no role {role}: {e}"));
    }
    // Only CloudFormation may act as vend-deployment, and the tenant stack's roles carry the boundary.
    let trust = iam
        .get_role()
        .role_name("vend-deployment")
        .send()
        .await
        .unwrap()
        .role()
        .unwrap()
        .assume_role_policy_document()
        .unwrap_or_default()
        .to_owned();
    let trust = urlencoding_decode(&trust);
    assert!(
        trust.contains("cloudformation.amazonaws.com") && !trust.contains(":root"),
        "{slug}: vend-deployment trusts more than CloudFormation: {trust}"
    );
    let function_role = iam
        .get_role()
        .role_name(format!("tenant-{slug}-function"))
        .send()
        .await
        .unwrap();
    let boundary = function_role
        .role()
        .unwrap()
        .permissions_boundary()
        .and_then(|b| b.permissions_boundary_arn())
        .unwrap_or_default();
    assert!(
        boundary.ends_with(":policy/vend-tenant-boundary"),
        "{slug}: the tenant stack's role has no boundary ({boundary:?})"
    );
    let status = moto::stack_status(&inside, "vend-tenant")
        .await
        .expect("the tenant stack");
    assert!(
        status.ends_with("_COMPLETE") && !status.contains("ROLLBACK"),
        "tenant stack is {status}"
    );

    // The custom domain in the tenant account, mapped to the tenant's API.
    let domain = format!("{slug}.{BASE_DOMAIN}");
    let apigw = aws_sdk_apigateway::Client::new(&inside);
    let d = apigw
        .get_domain_name()
        .domain_name(&domain)
        .send()
        .await
        .unwrap();
    let target = d.regional_domain_name().unwrap().to_owned();
    let apis = moto::mapped_apis(&inside, &domain).await;
    assert_eq!(apis.len(), 1);
    assert!(
        apigw
            .get_rest_api()
            .rest_api_id(&apis[0])
            .send()
            .await
            .is_ok(),
        "mapping points at a missing API"
    );

    // The record in the central zone points at the domain's regional target.
    let matching = moto::records_named(sdk, &domain).await;
    assert_eq!(matching.len(), 1, "{domain} should have exactly one record");
    assert_eq!(
        matching[0]
            .alias_target()
            .unwrap()
            .dns_name()
            .trim_end_matches('.'),
        target,
        "the record must point at the domain's regional target"
    );
    account
}

async fn count_domains_and_stacks(sdk: &SdkConfig, account: &str) -> (usize, usize, usize) {
    let inside = moto::sdk_in(sdk, account).await;
    let domains = aws_sdk_apigateway::Client::new(&inside)
        .get_domain_names()
        .send()
        .await
        .unwrap()
        .items()
        .len();
    let stacks = aws_sdk_cloudformation::Client::new(&inside)
        .list_stacks()
        .send()
        .await
        .unwrap()
        .stack_summaries()
        .iter()
        .filter(|s| {
            s.stack_status()
                .is_some_and(|x| x.as_str() != "DELETE_COMPLETE")
        })
        .count();
    let apis = aws_sdk_apigateway::Client::new(&inside)
        .get_rest_apis()
        .send()
        .await
        .unwrap()
        .items()
        .len();
    (domains, stacks, apis)
}

#[tokio::test]
async fn the_silo_workflow_vends_several_tenants_end_to_end() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    // Progress events reach the central bus: route them to a queue we can read.
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let queue = sqs
        .create_queue()
        .queue_name("vend-events")
        .send()
        .await
        .unwrap()
        .queue_url()
        .unwrap()
        .to_owned();
    let queue_arn = "arn:aws:sqs:us-east-1:123456789012:vend-events";
    let (app, rt) = spawn_silo(&moto.url, |_| {}, None).await;
    let events = aws_sdk_eventbridge::Client::new(&sdk);
    events
        .put_rule()
        .name("to-queue")
        .event_bus_name("vend")
        .event_pattern(r#"{"source": ["vend"]}"#)
        .send()
        .await
        .unwrap();
    events
        .put_targets()
        .rule("to-queue")
        .event_bus_name("vend")
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("q")
                .arn(queue_arn)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    let dispatcher = app.dispatcher_with_bus(
        vec![],
        vec![Duration::from_millis(100); 3],
        Some(rt.bus.clone()),
    );
    dispatcher.sync_endpoints().await.unwrap();
    let slugs = ["acme", "globex", "initech"];
    for s in slugs {
        assert_eq!(app.signup(&signup_body(s)).await.status(), 202);
    }
    let engine = app.start_engine(app.engine_config("w1"));
    let stop = tokio_util::sync::CancellationToken::new();
    let dispatching = tokio::spawn(dispatcher.clone().run(stop.clone()));
    for s in slugs {
        let t = app.wait_for_state(s, &["active", "failed"], WITHIN).await;
        assert_eq!(t["state"], "active", "{t:#}");
        assert_eq!(t["endpoint"], format!("https://{s}.{BASE_DOMAIN}"));
        let account = assert_contract_holds(&sdk, s).await;
        assert_eq!(t["account_id"], account);
    }
    engine.stop().await;

    // Every event went to the bus with Source vend: 1 created + 6 steps + 1 active per tenant.
    let expected = slugs.len() * 8;
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while received.len() < expected && tokio::time::Instant::now() < deadline {
        let r = sqs
            .receive_message()
            .queue_url(&queue)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        for m in r.messages() {
            received.push(serde_json::from_str::<Value>(m.body().unwrap()).unwrap());
            sqs.delete_message()
                .queue_url(&queue)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
        if r.messages().is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    stop.cancel();
    dispatching.await.unwrap();
    assert_eq!(received.len(), expected, "events on the bus");
    assert!(received.iter().all(|e| e["source"] == "vend"));
    let active = received
        .iter()
        .filter(|e| e["detail-type"] == "tenant.active")
        .count();
    assert_eq!(active, 3);
    let d: Value = app
        .ops(Method::GET, "/v1/deliveries?state=delivered", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(d["deliveries"].as_array().unwrap().len(), expected);
}

/// Runs `map_domain` of acme again and waits for the tenant to be active again.
async fn requeue_map_domain(app: &crate::support::TestApp) {
    let t = app.requeue_and_settle("acme", "map_domain", WITHIN).await;
    assert_eq!(t["state"], "active", "{t:#}");
}

#[tokio::test]
async fn per_account_certificates_are_validated_in_the_zone_waited_for_and_never_requested_twice() {
    // moto issues a certificate this long after its request: the step must wait for it durably.
    let moto = moto::start_with(&[("MOTO_ACM_VALIDATION_WAIT", "2")]).await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let (app, rt) = spawn_silo(
        &moto.url,
        |s| {
            s.certificates = vend::config::Certificates::PerAccount;
            // The domain is made four times below; AWS's one per 30 s would make that two minutes.
            s.budgets.insert(
                "apigateway.CreateDomainName".into(),
                vend::aws::limiter::Budget::new(10.0, 10.0, true),
            );
        },
        None,
    )
    .await;
    app.signup(&signup_body("acme")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    let t = app
        .wait_for_state("acme", &["active", "failed"], WITHIN)
        .await;
    assert_eq!(t["state"], "active", "{t:#}");
    let account = assert_contract_holds(&sdk, "acme").await;
    let inside = moto::sdk_in(&sdk, &account).await;
    let domain = format!("acme.{BASE_DOMAIN}");

    // One certificate, in the tenant's account, issued, recorded, and the one the domain uses.
    let certs = moto::certificates_in(&inside, &domain).await;
    assert_eq!(certs.len(), 1, "{certs:?}");
    let (arn, status) = certs[0].clone();
    assert_eq!(status, "ISSUED");
    assert!(
        arn.contains(&format!(":{account}:")),
        "{arn} is not in {account}"
    );
    let resources: Value = sqlx::query_scalar("SELECT resources FROM tenants WHERE slug = 'acme'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(resources["certificate_arn"], arn.as_str());
    assert_eq!(
        moto::domain_certificate(&inside, &domain).await.as_deref(),
        Some(arn.as_str())
    );

    // Its DNS validation record is in the central zone, as ACM asked.
    let described = aws_sdk_acm::Client::new(&inside)
        .describe_certificate()
        .certificate_arn(&arn)
        .send()
        .await
        .unwrap();
    let want = described.certificate().unwrap().domain_validation_options()[0]
        .resource_record()
        .unwrap()
        .clone();
    let zone = rt.silo.management.hosted_zone_id.clone();
    let target = rt.silo.route53.target_of(&zone, want.name()).await.unwrap();
    assert_eq!(target.as_deref(), Some(want.value().trim_end_matches('.')));

    // map_domain waited for the certificate (a durable wait, not a worker sleeping) before using it.
    let history = app.history("acme").await;
    assert!(
        history.iter().any(|h| h["step"] == "map_domain"
            && h["message"]
                .as_str()
                .unwrap_or("")
                .contains("pending DNS validation")),
        "{history:#?}"
    );

    // A crash after ACM returned the certificate but before vend recorded it, and a domain lost since:
    // the rerun finds the certificate by name instead of requesting a second one.
    sqlx::query("UPDATE tenants SET resources = resources - 'certificate_arn' WHERE slug = 'acme'")
        .execute(&app.pool)
        .await
        .unwrap();
    moto::delete_domain(&inside, &domain).await;
    let t = app.requeue_and_settle("acme", "map_domain", WITHIN).await;
    assert_eq!(t["state"], "active", "{t:#}");
    assert_eq!(
        moto::certificates_in(&inside, &domain).await,
        vec![(arn.clone(), "ISSUED".into())]
    );
    assert_eq!(
        moto::domain_certificate(&inside, &domain).await.as_deref(),
        Some(arn.as_str())
    );

    // And a rerun with everything in place touches nothing.
    let records = moto::record_count(&sdk).await;
    requeue_map_domain(&app).await;
    assert_eq!(moto::certificates_in(&inside, &domain).await.len(), 1);
    assert_eq!(moto::record_count(&sdk).await, records);

    // A person replaces the certificate (deletes it and the domain, requests one by hand): vend adopts
    // that one rather than requesting its own.
    let acm = aws_sdk_acm::Client::new(&inside);
    moto::delete_domain(&inside, &domain).await;
    acm.delete_certificate()
        .certificate_arn(&arn)
        .send()
        .await
        .unwrap();
    let by_hand = acm
        .request_certificate()
        .domain_name(&domain)
        .validation_method(aws_sdk_acm::types::ValidationMethod::Dns)
        .send()
        .await
        .unwrap()
        .certificate_arn()
        .unwrap()
        .to_owned();
    requeue_map_domain(&app).await;
    let certs = moto::certificates_in(&inside, &domain).await;
    assert_eq!(certs, vec![(by_hand.clone(), "ISSUED".into())]);
    assert_eq!(
        moto::domain_certificate(&inside, &domain).await.as_deref(),
        Some(by_hand.as_str())
    );

    // A person deletes it without a replacement: vend requests a new one (within the hour ACM would
    // answer the first request's token with the deleted certificate).
    moto::delete_domain(&inside, &domain).await;
    acm.delete_certificate()
        .certificate_arn(&by_hand)
        .send()
        .await
        .unwrap();
    requeue_map_domain(&app).await;
    let certs = moto::certificates_in(&inside, &domain).await;
    assert_eq!(certs.len(), 1, "{certs:?}");
    assert!(certs[0].0 != arn && certs[0].0 != by_hand, "{certs:?}");
    assert_eq!(
        moto::domain_certificate(&inside, &domain).await.as_deref(),
        Some(certs[0].0.as_str())
    );
    engine.stop().await;
}

#[tokio::test]
async fn running_every_step_again_changes_nothing_in_aws() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let (app, _rt) = spawn_silo(&moto.url, |_| {}, None).await;
    app.signup(&signup_body("acme")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    app.wait_for_state("acme", &["active"], WITHIN).await;
    let account = assert_contract_holds(&sdk, "acme").await;
    let before = (
        count_domains_and_stacks(&sdk, &account).await,
        moto::record_count(&sdk).await,
    );

    // Requeue from each step in turn: that step and every later one run again on a tenant whose AWS
    // state is complete. Nothing may be created twice.
    for step in vend::steps::SILO_KINDS.iter().rev() {
        let t = app.requeue_and_settle("acme", step, WITHIN).await;
        assert_eq!(t["state"], "active", "after rerunning from {step}: {t:#}");
        assert_eq!(
            assert_contract_holds(&sdk, "acme").await,
            account,
            "rerun from {step} changed the account"
        );
        let after = (
            count_domains_and_stacks(&sdk, &account).await,
            moto::record_count(&sdk).await,
        );
        assert_eq!(
            after, before,
            "rerun from {step} changed AWS (domains, stacks, APIs; records)"
        );
    }
    engine.stop().await;
    let org = aws_sdk_organizations::Client::new(&sdk);
    assert_eq!(
        org.list_accounts().send().await.unwrap().accounts().len(),
        2,
        "the management account and acme's"
    );
}

#[tokio::test]
async fn the_tenants_own_tagged_account_is_adopted_not_created_again() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let org = aws_sdk_organizations::Client::new(&sdk);
    // What a crash-recovered CreateAccount of vend's leaves: the account with vend's tenant tag.
    let pre = org
        .create_account()
        .email(format!("aws+acme@{BASE_DOMAIN}"))
        .account_name("made by hand")
        .tags(tag("vend:tenant", "acme"))
        .send()
        .await
        .unwrap();
    let pre_id = pre
        .create_account_status()
        .unwrap()
        .account_id()
        .unwrap()
        .to_owned();

    let (app, _rt) = spawn_silo(&moto.url, |_| {}, None).await;
    app.signup(&signup_body("acme")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    let t = app
        .wait_for_state("acme", &["active", "failed"], WITHIN)
        .await;
    engine.stop().await;
    assert_eq!(t["state"], "active", "{t:#}");
    assert_eq!(t["account_id"], pre_id.as_str());
    assert!(t["resources"]["account_adopted"].is_string());
    let same_email = org
        .list_accounts()
        .send()
        .await
        .unwrap()
        .accounts()
        .iter()
        .filter(|a| a.email() == Some(&format!("aws+acme@{BASE_DOMAIN}")))
        .count();
    assert_eq!(same_email, 1, "a second account was created");
    // Adopted accounts get the tenant's tags too.
    assert_eq!(assert_contract_holds(&sdk, "acme").await, pre_id);
}

/// IAM returns policy documents URL-encoded.
fn urlencoding_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn tag(k: &str, v: &str) -> aws_sdk_organizations::types::Tag {
    aws_sdk_organizations::types::Tag::builder()
        .key(k)
        .value(v)
        .build()
        .unwrap()
}

/// An account made outside vend, with tags and a parent, as it stands in AWS.
async fn account_state(
    org: &aws_sdk_organizations::Client,
    id: &str,
) -> (Vec<(String, String)>, String) {
    let tags = org
        .list_tags_for_resource()
        .resource_id(id)
        .send()
        .await
        .unwrap()
        .tags()
        .iter()
        .map(|t| (t.key().to_owned(), t.value().to_owned()))
        .collect();
    let parent = moto::parent_of(org, id).await;
    (tags, parent)
}

#[tokio::test]
async fn an_account_with_the_tenants_email_or_name_but_not_its_tag_is_left_alone() {
    // (root e-mail, account name, tags) of an account someone else made.
    let cases = [
        (
            format!("aws+secops@{BASE_DOMAIN}"),
            "Security".to_owned(),
            vec![],
        ),
        (
            "audit-team@corp.example".to_owned(),
            "tenant-secops".to_owned(),
            vec![tag("team", "audit")],
        ),
        (
            format!("aws+secops@{BASE_DOMAIN}"),
            "sec".to_owned(),
            vec![tag("vend:tenant", "other")],
        ),
    ];
    for (email, name, tags) in cases {
        let moto = moto::start().await;
        let sdk = moto::sdk(&moto.url).await;
        moto::prepare_management(&sdk).await;
        let org = aws_sdk_organizations::Client::new(&sdk);
        let pre_id = org
            .create_account()
            .email(&email)
            .account_name(&name)
            .set_tags(Some(tags))
            .send()
            .await
            .unwrap()
            .create_account_status()
            .unwrap()
            .account_id()
            .unwrap()
            .to_owned();
        let before = account_state(&org, &pre_id).await;

        let (app, _rt) = spawn_silo(&moto.url, |_| {}, None).await;
        app.signup(&signup_body("secops")).await;
        let engine = app.start_engine(app.engine_config("w1"));
        let t = app
            .wait_for_state("secops", &["active", "failed"], WITHIN)
            .await;
        engine.stop().await;
        assert_eq!(t["state"], "failed", "{email} {name}: {t:#}");
        let step = &t["steps"][0];
        assert_eq!(step["name"], "create_account");
        let err = step["last_error"].to_string();
        assert!(err.contains(&pre_id), "{err} does not name {pre_id}");
        assert!(t["account_id"].is_null(), "{t:#}");
        assert_eq!(
            account_state(&org, &pre_id).await,
            before,
            "the account was touched"
        );
        assert_eq!(
            org.list_accounts().send().await.unwrap().accounts().len(),
            2,
            "no account was created for the tenant"
        );
    }
}

/// Delegates to the real Organizations (moto) but, once, never returns from `create_account` after
/// AWS has acted on it: the worker "dies" between the call and recording its answer.
pub(crate) struct CrashAfterCreate {
    pub(crate) inner: SdkOrganizations,
    pub(crate) armed: AtomicBool,
    pub(crate) called: Arc<Notify>,
}

impl CrashAfterCreate {
    /// Over moto's Organizations; `armed` says whether the next `create_account` "dies".
    pub(crate) fn over(sdk: &SdkConfig, armed: bool) -> Arc<Self> {
        Arc::new(Self {
            inner: SdkOrganizations::new(vend::aws::Aws::new(
                sdk.clone(),
                vend::telemetry::Metrics::new(),
            )),
            armed: AtomicBool::new(armed),
            called: Arc::new(Notify::new()),
        })
    }
}

/// vend serving the enterprise workflow on a fresh moto whose Organizations "dies" after
/// CreateAccount while armed: what the pool and tier crash tests start from.
pub(crate) struct CrashRig {
    pub moto: moto::Moto,
    pub sdk: SdkConfig,
    pub orgs: Arc<CrashAfterCreate>,
    pub app: crate::support::TestApp,
    pub rt: vend::app::AwsRuntime,
}

impl CrashRig {
    pub(crate) async fn start(armed: bool) -> Self {
        let moto = moto::start().await;
        let sdk = moto::sdk(&moto.url).await;
        moto::prepare_management(&sdk).await;
        let orgs = CrashAfterCreate::over(&sdk, armed);
        let (app, rt) = crate::support::spawn_silo_with(
            sdk.clone(),
            Some(orgs.clone()),
            |_| {},
            &crate::support::fast_enterprise_toml(),
        )
        .await;
        CrashRig {
            moto,
            sdk,
            orgs,
            app,
            rt,
        }
    }
}

#[async_trait]
impl Organizations for CrashAfterCreate {
    async fn organization_id(&self) -> Result<String, AwsError> {
        self.inner.organization_id().await
    }
    async fn root(&self) -> Result<(String, bool), AwsError> {
        self.inner.root().await
    }
    async fn enable_scps(&self, r: &str) -> Result<(), AwsError> {
        self.inner.enable_scps(r).await
    }
    async fn find_ou(&self, p: &str, n: &str) -> Result<Option<String>, AwsError> {
        self.inner.find_ou(p, n).await
    }
    async fn create_ou(&self, p: &str, n: &str) -> Result<String, AwsError> {
        self.inner.create_ou(p, n).await
    }
    async fn list_scps(&self) -> Result<Vec<PolicySummary>, AwsError> {
        self.inner.list_scps().await
    }
    async fn scp_content(&self, id: &str) -> Result<String, AwsError> {
        self.inner.scp_content(id).await
    }
    async fn create_scp(&self, n: &str, d: &str, c: &str) -> Result<String, AwsError> {
        self.inner.create_scp(n, d, c).await
    }
    async fn update_scp(&self, id: &str, c: &str) -> Result<(), AwsError> {
        self.inner.update_scp(id, c).await
    }
    async fn scps_attached_to(&self, t: &str) -> Result<Vec<String>, AwsError> {
        self.inner.scps_attached_to(t).await
    }
    async fn attach_scp(&self, p: &str, t: &str) -> Result<(), AwsError> {
        self.inner.attach_scp(p, t).await
    }
    async fn list_accounts(&self) -> Result<Vec<Account>, AwsError> {
        self.inner.list_accounts().await
    }
    async fn find_accounts(&self, e: &str, n: &str) -> Result<Vec<Account>, AwsError> {
        self.inner.find_accounts(e, n).await
    }
    async fn tags_of(&self, a: &str) -> Result<Vec<(String, String)>, AwsError> {
        self.inner.tags_of(a).await
    }
    async fn find_create_request(&self, n: &str) -> Result<Option<CreateRequest>, AwsError> {
        self.inner.find_create_request(n).await
    }
    async fn create_account(
        &self,
        e: &str,
        n: &str,
        t: &[(String, String)],
    ) -> Result<CreateRequest, AwsError> {
        let r = self.inner.create_account(e, n, t).await;
        if self.armed.swap(false, Ordering::SeqCst) {
            self.called.notify_one();
            std::future::pending::<()>().await;
        }
        r
    }
    async fn describe_create_request(&self, id: &str) -> Result<CreateRequest, AwsError> {
        self.inner.describe_create_request(id).await
    }
    async fn tag_account(&self, a: &str, t: &[(String, String)]) -> Result<(), AwsError> {
        self.inner.tag_account(a, t).await
    }
    async fn account_status(&self, a: &str) -> Result<Option<String>, AwsError> {
        self.inner.account_status(a).await
    }
    async fn close_account(&self, a: &str) -> Result<(), AwsError> {
        self.inner.close_account(a).await
    }
    async fn parent_of(&self, a: &str) -> Result<String, AwsError> {
        self.inner.parent_of(a).await
    }
    async fn move_account(&self, a: &str, f: &str, t: &str) -> Result<(), AwsError> {
        self.inner.move_account(a, f, t).await
    }
}

#[tokio::test]
async fn a_crash_between_create_account_and_recording_its_id_ends_with_one_account() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let orgs = CrashAfterCreate::over(&sdk, true);
    let (app, _rt) = spawn_silo(&moto.url, |_| {}, Some(orgs.clone())).await;
    app.signup(&signup_body("acme")).await;

    let mut config = app.engine_config("doomed");
    config.lease = Duration::from_secs(1);
    let doomed = app.start_engine(config.clone());
    orgs.called.notified().await;
    doomed.kill().await;
    // AWS created the account; vend recorded only its intent.
    let t = app.tenant("acme").await;
    assert!(t["resources"]["create_intent_at"].is_string());
    assert!(t["resources"].get("create_request_id").is_none());
    assert_eq!(accounts_of(&sdk, "acme").await.len(), 1);

    config.worker_id = "survivor".into();
    let survivor = app.start_engine(config);
    let t = app
        .wait_for_state("acme", &["active", "failed"], WITHIN)
        .await;
    survivor.stop().await;
    assert_eq!(t["state"], "active", "{t:#}");
    let account = assert_contract_holds(&sdk, "acme").await;
    assert_eq!(t["account_id"], account);
    assert_eq!(
        t["resources"]["account_adopted"],
        "found after an unknown outcome"
    );
}

async fn scp_state(sdk: &SdkConfig) -> Vec<(String, usize, String)> {
    let org = aws_sdk_organizations::Client::new(sdk);
    let policies = org
        .list_policies()
        .filter(aws_sdk_organizations::types::PolicyType::ServiceControlPolicy)
        .send()
        .await
        .unwrap();
    let ou_id = moto::tenant_ou_id(&org).await;
    let attached = org
        .list_policies_for_target()
        .target_id(&ou_id)
        .filter(aws_sdk_organizations::types::PolicyType::ServiceControlPolicy)
        .send()
        .await
        .unwrap();
    let mut out = Vec::new();
    for p in policies
        .policies()
        .iter()
        .filter(|p| p.name().unwrap().starts_with("vend-"))
    {
        let n = attached
            .policies()
            .iter()
            .filter(|a| a.id() == p.id())
            .count();
        let content = org
            .describe_policy()
            .policy_id(p.id().unwrap())
            .send()
            .await
            .unwrap();
        out.push((
            p.name().unwrap().to_owned(),
            n,
            content.policy().unwrap().content().unwrap().to_owned(),
        ));
    }
    out.sort();
    out
}

#[tokio::test]
async fn the_scp_reconcile_is_idempotent_across_restarts_and_follows_the_files() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let dir = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(crate::support::postgres::repo_root().join("scp-policies")).unwrap()
    {
        let f = f.unwrap().path();
        std::fs::copy(&f, dir.path().join(f.file_name().unwrap())).unwrap();
    }
    let scp_dir = dir.path().to_owned();
    let (_a, _) = spawn_silo(&moto.url, |s| s.scp_dir = scp_dir.clone(), None).await;
    let first = scp_state(&sdk).await;
    assert_eq!(first.len(), scp_names().len());
    assert!(first.iter().all(|(_, attached, _)| *attached == 1));

    // A restart changes nothing.
    let (_b, _) = spawn_silo(&moto.url, |s| s.scp_dir = scp_dir.clone(), None).await;
    assert_eq!(scp_state(&sdk).await, first);

    // An edited file updates its policy in place.
    std::fs::write(
        dir.path().join("deny-leaving-organization.json"),
        r#"{"Version": "2012-10-17", "Statement": [{"Sid": "Edited", "Effect": "Deny", "Action": "organizations:LeaveOrganization", "Resource": "*"}]}"#,
    )
    .unwrap();
    let (_c, _) = spawn_silo(&moto.url, |s| s.scp_dir = scp_dir.clone(), None).await;
    let third = scp_state(&sdk).await;
    assert_eq!(third.len(), first.len());
    let edited = third
        .iter()
        .find(|(n, _, _)| n == "vend-deny-leaving-organization")
        .unwrap();
    assert!(edited.2.contains("Edited"));
    assert_eq!(edited.1, 1);
}

#[tokio::test]
async fn an_invalid_scp_file_stops_start_up_with_its_name() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("fine.json"), r#"{"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "ec2:*", "Resource": "*"}]}"#).unwrap();
    std::fs::write(dir.path().join("too-long.json"), format!(r#"{{"Version": "2012-10-17", "Statement": [{{"Sid": "{}", "Effect": "Deny", "Action": "*", "Resource": "*"}}]}}"#, "A".repeat(5200))).unwrap();
    let (pool, _) = crate::support::postgres::fresh_database().await;
    let mut settings = crate::support::silo_settings();
    settings.scp_dir = dir.path().to_owned();
    let e = vend::app::AwsRuntime::start(
        settings,
        sdk.clone(),
        pool,
        vend::telemetry::Metrics::new(),
        None,
    )
    .await
    .err()
    .expect("start-up must fail")
    .to_string();
    assert!(e.contains("too-long.json") && e.contains("5120"), "{e}");
    // Nothing was created in AWS.
    let org = aws_sdk_organizations::Client::new(&sdk);
    let policies = org
        .list_policies()
        .filter(aws_sdk_organizations::types::PolicyType::ServiceControlPolicy)
        .send()
        .await
        .unwrap();
    assert!(
        policies
            .policies()
            .iter()
            .all(|p| !p.name().unwrap().starts_with("vend-"))
    );
}

/// vend's AWS start-up on a fresh database, in the background: its readiness and its task.
async fn start_in_background(
    sdk: &SdkConfig,
) -> (
    vend::readiness::Readiness,
    tokio::task::JoinHandle<Result<vend::app::AwsRuntime, anyhow::Error>>,
) {
    let (pool, _) = crate::support::postgres::fresh_database().await;
    let readiness = vend::readiness::Readiness::starting("start");
    let unprepared = vend::app::AwsRuntime::prepare(
        crate::support::silo_settings(),
        sdk.clone(),
        pool,
        vend::telemetry::Metrics::new(),
        None,
    )
    .unwrap();
    let seen = readiness.clone();
    let start = tokio::spawn(async move { unprepared.until_ready(&readiness).await });
    (seen, start)
}

/// Waits until start-up reports that it waits for a reason containing every one of `needles`.
async fn wait_for_reason(seen: &vend::readiness::Readiness, needles: &[&str]) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let why = seen.waiting_for().unwrap_or_default();
        if needles.iter().all(|n| why.contains(n)) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{why}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_scp_with_vends_name_that_vend_did_not_create_is_never_changed() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let org = aws_sdk_organizations::Client::new(&sdk);
    // Someone made a policy under the name vend would give its file, without vend's tag.
    let theirs = r#"{"Version":"2012-10-17","Statement":[{"Sid":"Theirs","Effect":"Deny","Action":"s3:*","Resource":"*"}]}"#;
    let foreign = org
        .create_policy()
        .name("vend-deny-leaving-organization")
        .description("made by hand")
        .content(theirs)
        .r#type(aws_sdk_organizations::types::PolicyType::ServiceControlPolicy)
        .send()
        .await
        .unwrap();
    let foreign_id = foreign
        .policy()
        .unwrap()
        .policy_summary()
        .unwrap()
        .id()
        .unwrap()
        .to_owned();
    let (seen, start) = start_in_background(&sdk).await;
    wait_for_reason(&seen, &["vend did not create it", &foreign_id]).await;
    assert!(
        !start.is_finished(),
        "not ready while the guardrail is not vend's"
    );
    let content = |id: String| {
        let org = org.clone();
        async move {
            org.describe_policy()
                .policy_id(id)
                .send()
                .await
                .unwrap()
                .policy()
                .unwrap()
                .content()
                .unwrap()
                .to_owned()
        }
    };
    assert_eq!(content(foreign_id.clone()).await, theirs, "left as it was");
    let ou_id = moto::tenant_ou_id(&org).await;
    let attached = org
        .list_policies_for_target()
        .target_id(&ou_id)
        .filter(aws_sdk_organizations::types::PolicyType::ServiceControlPolicy)
        .send()
        .await
        .unwrap();
    assert!(
        attached
            .policies()
            .iter()
            .all(|p| p.id() != Some(foreign_id.as_str())),
        "not attached to the tenant OU either"
    );

    // Ops hand it to vend by tagging it: start-up goes on and the policy follows the file.
    org.tag_resource()
        .resource_id(&foreign_id)
        .tags(
            aws_sdk_organizations::types::Tag::builder()
                .key("vend:managed-by")
                .value("vend")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(90), start)
        .await
        .expect("ready once the policy is vend's")
        .unwrap()
        .unwrap();
    let now = content(foreign_id.clone()).await;
    assert!(now.contains("LeaveOrganization"), "{now}");
    let state = scp_state(&sdk).await;
    assert_eq!(
        state.len(),
        scp_names().len(),
        "no second policy of that name"
    );
    assert!(state.iter().all(|(_, attached, _)| *attached == 1));
}

#[tokio::test]
async fn start_up_explains_a_missing_organization_and_a_missing_zone_and_waits_for_them() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    let (seen, start) = start_in_background(&sdk).await;
    // Not an ending: the reason is reported, and start-up goes on once ops fix it.
    wait_for_reason(&seen, &["not in an AWS Organization"]).await;
    aws_sdk_organizations::Client::new(&sdk)
        .create_organization()
        .feature_set(aws_sdk_organizations::types::OrganizationFeatureSet::All)
        .send()
        .await
        .unwrap();
    wait_for_reason(&seen, &["VEND_BASE_DOMAIN", BASE_DOMAIN]).await;
    assert!(!start.is_finished());
    aws_sdk_route53::Client::new(&sdk)
        .create_hosted_zone()
        .name(BASE_DOMAIN)
        .caller_reference("late")
        .send()
        .await
        .unwrap();
    let rt = tokio::time::timeout(WITHIN, start)
        .await
        .expect("ready once the zone exists")
        .unwrap()
        .unwrap();
    assert_eq!(seen.waiting_for(), None);
    assert!(!rt.silo.management.hosted_zone_id.is_empty());
}

#[tokio::test]
async fn a_record_someone_else_made_for_the_tenants_name_is_left_unchanged() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let r53 = aws_sdk_route53::Client::new(&sdk);
    let zone = moto::base_zone_id(&r53).await;
    let name = format!("shop.{BASE_DOMAIN}.");
    let record = aws_sdk_route53::types::ResourceRecordSet::builder()
        .name(&name)
        .r#type(aws_sdk_route53::types::RrType::Cname)
        .ttl(300)
        .resource_records(
            aws_sdk_route53::types::ResourceRecord::builder()
                .value("storefront.saas.example")
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    r53.change_resource_record_sets()
        .hosted_zone_id(&zone)
        .change_batch(
            aws_sdk_route53::types::ChangeBatch::builder()
                .changes(
                    aws_sdk_route53::types::Change::builder()
                        .action(aws_sdk_route53::types::ChangeAction::Create)
                        .resource_record_set(record)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    let records = || moto::records_named(&sdk, &name);
    let before = records().await;

    let (app, _rt) = spawn_silo(&moto.url, |_| {}, None).await;
    app.signup(&signup_body("shop")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    let t = app
        .wait_for_state("shop", &["active", "failed"], WITHIN)
        .await;
    engine.stop().await;
    assert_eq!(t["state"], "failed", "{t:#}");
    let step = t["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["state"] == "failed")
        .unwrap();
    assert_eq!(step["name"], "map_domain");
    assert!(
        step["last_error"]
            .to_string()
            .contains("storefront.saas.example"),
        "{step:#}"
    );
    assert_eq!(records().await, before, "the record was changed");
}

#[tokio::test]
async fn past_the_creation_budget_a_tenant_waits_visibly_without_calling_aws() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let (app, rt) = spawn_silo(
        &moto.url,
        |s| {
            s.creation_budget = vend::config::CreationBudget {
                accounts: 2,
                window: Duration::from_secs(3600),
            }
        },
        None,
    )
    .await;
    for slug in ["first", "second"] {
        app.signup(&signup_body(slug)).await;
    }
    let engine = app.start_engine(app.engine_config("w1"));
    for slug in ["first", "second"] {
        let t = app
            .wait_for_state(slug, &["active", "failed"], WITHIN)
            .await;
        assert_eq!(t["state"], "active", "{t:#}");
    }
    app.signup(&signup_body("third")).await;
    let deadline = tokio::time::Instant::now() + WITHIN;
    let step = loop {
        let t = app.tenant("third").await;
        let step = t["steps"][0].clone();
        if step["last_error_code"] == "AccountCreationBudget" {
            break step;
        }
        assert!(tokio::time::Instant::now() < deadline, "{t:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    engine.stop().await;
    assert_eq!(step["state"], "waiting", "{step:#}");
    assert_eq!(step["attempts"], 1, "waiting spends no attempts: {step:#}");
    assert!(
        step["last_error"].as_str().unwrap().contains("2 per 1h"),
        "{step:#}"
    );
    let next: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(step["next_attempt_at"].clone()).unwrap();
    assert!(
        next > chrono::Utc::now() + chrono::Duration::minutes(50),
        "{next}"
    );
    assert_eq!(
        moto::tagged_accounts(&sdk).await.len(),
        2,
        "no account was requested for the third tenant"
    );
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT e.type FROM events e JOIN tenants t ON t.id = e.tenant_id WHERE t.slug = 'third'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        events
            .iter()
            .filter(|t| *t == "tenant.creation_budget.exhausted")
            .count(),
        1,
        "{events:?}"
    );
    let metrics = rt.silo.aws.metrics().encode();
    assert!(
        metrics.lines().any(
            |l| l.starts_with("vend_account_creation_budget_waits_total ") && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
}

#[tokio::test]
async fn only_accounts_under_the_tenant_ou_may_put_events_on_the_central_bus() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let (_app, rt) = spawn_silo(&moto.url, |_| {}, None).await;
    let m = &rt.silo.management;
    let bus = aws_sdk_eventbridge::Client::new(&sdk)
        .describe_event_bus()
        .name("vend")
        .send()
        .await
        .unwrap();
    let policy: Value = serde_json::from_str(bus.policy().expect("the bus has a policy")).unwrap();
    let statements = policy["Statement"].as_array().unwrap();
    assert_eq!(statements.len(), 1, "{policy:#}");
    let paths = &statements[0]["Condition"]["ForAnyValue:StringLike"]["aws:PrincipalOrgPaths"];
    assert_eq!(
        paths[0],
        format!("{}/{}/{}/*", m.organization_id, m.root_id, m.tenant_ou_id),
        "{policy:#}"
    );
    assert!(!policy.to_string().contains("PrincipalOrgID"), "{policy:#}");
}
