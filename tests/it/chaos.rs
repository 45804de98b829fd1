//! The silo workflow through the fault-injecting proxy in front of moto: throttles, 5xx, lost
//! responses, AWS's quotas and an asynchronous, capped CreateAccount. Whatever AWS says, every tenant
//! ends with exactly one of everything, the CreateAccount cap is never exceeded, and the number of calls
//! per tenant stays bounded.

use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use vend_aws_proxy::{Proxy, ProxyConfig, ProxyStats, Scripted};

use crate::support::moto::BASE_DOMAIN;
use crate::support::moto::{self, assert_exactly_one_of_everything};
use crate::support::{TestApp, signup_body, spawn_silo_with};

/// CreateDomainName allows one call per 30 s per account: a few throttles cost minutes.
const WITHIN: Duration = Duration::from_secs(300);

/// AWS calls per tenant (besides EC2's default VPC sweep, bounded on its own) that the whole silo
/// workflow may take under 30 % throttles and 5 % 5xx, SDK retries included. Without faults it takes about 24; each fault costs one more call, so about 35
/// is expected (measured: 33) — this bound leaves room for bad luck but not for a retry storm.
const CALLS_PER_TENANT_BOUND: f64 = 60.0;

struct Chaos {
    _moto: moto::Moto,
    moto_sdk: SdkConfig,
    proxy: Arc<Proxy>,
    proxy_url: String,
    app: TestApp,
}

async fn chaos(delay: Duration) -> Chaos {
    chaos_with(delay, |_| {}).await
}

/// As [`chaos`], with the silo's settings tuned; moto issues ACM certificates at once.
async fn chaos_with(delay: Duration, tune: impl FnOnce(&mut vend::config::AwsSettings)) -> Chaos {
    let moto = moto::start_with(&[("MOTO_ACM_VALIDATION_WAIT", "0")]).await;
    let moto_sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&moto_sdk).await;
    let mut config = ProxyConfig::new(&moto.url);
    config.create_account_delay = delay;
    let proxy = Proxy::new(config);
    let addr = proxy.spawn().await.unwrap();
    let sdk = moto::sdk(&format!("http://{addr}")).await;
    let toml =
        crate::support::fast_silo_toml().replace("maximum_attempts = 10", "maximum_attempts = 25");
    let (app, _rt) = spawn_silo_with(sdk, None, tune, &toml).await;
    Chaos {
        _moto: moto,
        moto_sdk,
        proxy,
        proxy_url: format!("http://{addr}"),
        app,
    }
}

/// An account with tenant `late`'s root e-mail, made through AWS (the proxy) after vend indexed the
/// organization; its id once AWS has made it.
async fn made_by_hand(
    org: &aws_sdk_organizations::Client,
    name: &str,
    tag: Option<aws_sdk_organizations::types::Tag>,
) -> String {
    let pre = org
        .create_account()
        .email(format!("aws+late@{BASE_DOMAIN}"))
        .account_name(name)
        .set_tags(tag.map(|t| vec![t]))
        .send()
        .await
        .unwrap();
    loop {
        let s = org
            .describe_create_account_status()
            .create_account_request_id(pre.create_account_status().unwrap().id().unwrap())
            .send()
            .await
            .unwrap();
        if let Some(id) = s.create_account_status().unwrap().account_id() {
            return id.to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Calls of `op` that reached the emulator and were answered.
fn answered(stats: &ProxyStats, op: &str) -> u64 {
    stats.operations.get(op).map_or(0, |o| {
        o.calls - o.quota_throttles - o.injected_throttles - o.injected_errors - o.lost_responses
    })
}

/// Prints the proxy's counts; AWS calls per tenant outside EC2, and EC2's (the default VPC sweep).
fn report(stats: &ProxyStats, tenants: usize) -> (f64, f64) {
    let ec2 = stats.service_calls("ec2");
    let per_tenant = (stats.total_calls() - ec2) as f64 / tenants as f64;
    let ec2_per_tenant = ec2 as f64 / tenants as f64;
    eprintln!(
        "calls {} ({per_tenant:.1}/tenant besides EC2's {ec2_per_tenant:.1}), throttles {}, max CreateAccount in flight {}, over cap {}",
        stats.total_calls(),
        stats.total_throttles(),
        stats.create_account_max_in_flight,
        stats.create_account_over_cap
    );
    (per_tenant, ec2_per_tenant)
}

#[tokio::test]
async fn throttles_and_errors_on_every_api_still_vend_each_tenant_exactly_once() {
    let c = chaos(Duration::from_millis(500)).await;
    c.proxy.reset_stats();
    c.proxy.set_faults(0.30, 0.05, 0.0);
    let slugs: Vec<String> = (0..8).map(|i| format!("tenant-{i}")).collect();
    for s in &slugs {
        c.app.signup(&signup_body(s)).await;
    }
    let engine = c.app.start_engine(c.app.engine_config("w1"));
    for s in &slugs {
        let t = c.app.wait_for_state(s, &["active", "failed"], WITHIN).await;
        assert_eq!(t["state"], "active", "{t:#}");
    }
    engine.stop().await;
    let stats = c.proxy.stats();
    let (per_tenant, ec2_per_tenant) = report(&stats, slugs.len());
    eprintln!(
        "{:#?}",
        stats
            .operations
            .iter()
            .filter(|(k, _)| k.starts_with("ec2."))
            .collect::<Vec<_>>()
    );
    let _ = ec2_per_tenant;
    assert!(
        stats.total_throttles() > 0 && stats.operations.values().any(|o| o.injected_errors > 0),
        "faults were injected"
    );
    assert_eq!(
        stats.create_account_over_cap, 0,
        "CreateAccount sent past the in-flight cap"
    );
    assert!(stats.create_account_max_in_flight <= 5);
    assert!(
        per_tenant <= CALLS_PER_TENANT_BOUND,
        "{per_tenant:.1} AWS calls per tenant: a retry storm"
    );
    // The default VPC sweep (about ten EC2 calls per region) resumes where a failed attempt left off:
    // each region's default VPC is looked up about once, not once per attempt of the step.
    let regions = moto::enabled_regions(&c.moto_sdk).await.len();
    let looked_up = answered(&stats, "ec2.DescribeVpcs");
    assert!(
        looked_up as f64 <= 1.5 * (regions * slugs.len()) as f64,
        "{looked_up} default VPC lookups answered for {} tenants in {regions} regions: the sweep restarts",
        slugs.len()
    );
    // A step attempt that met one of those answers keeps AWS's request id in its history entry (the
    // proxy answers as AWS does, with an id), for a support case.
    let with_ids: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM history WHERE detail->'error'->>'aws_request_id' IS NOT NULL",
    )
    .fetch_one(&c.app.pool)
    .await
    .unwrap();
    assert!(with_ids > 0, "no attempt recorded an AWS request id");
    c.proxy.set_faults(0.0, 0.0, 0.0);
    assert_exactly_one_of_everything(&c.moto_sdk, &slugs).await;
}

#[tokio::test]
async fn lost_responses_anywhere_never_create_anything_twice() {
    let c = chaos(Duration::from_millis(300)).await;
    // One in six calls of every kind happens at AWS but its answer is lost: every step, at every call,
    // has to find out what it already did.
    c.proxy.set_faults(0.0, 0.0, 1.0 / 6.0);
    let slugs: Vec<String> = (0..5).map(|i| format!("lost-{i}")).collect();
    for s in &slugs {
        c.app.signup(&signup_body(s)).await;
    }
    let engine = c.app.start_engine(c.app.engine_config("w1"));
    for s in &slugs {
        let t = c.app.wait_for_state(s, &["active", "failed"], WITHIN).await;
        assert_eq!(t["state"], "active", "{t:#}");
    }
    engine.stop().await;
    let stats = c.proxy.stats();
    report(&stats, slugs.len());
    assert!(stats.operations.contains_key("organizations.CreateAccount"));
    assert!(
        stats
            .operations
            .values()
            .map(|o| o.lost_responses)
            .sum::<u64>()
            > 5,
        "responses were lost"
    );
    c.proxy.set_faults(0.0, 0.0, 0.0);
    assert_exactly_one_of_everything(&c.moto_sdk, &slugs).await;
}

#[tokio::test]
async fn two_workers_keep_create_account_within_its_cap_and_use_all_of_it() {
    let c = chaos(Duration::from_secs(1)).await;
    let slugs: Vec<String> = (0..12).map(|i| format!("cap-{i}")).collect();
    for s in &slugs {
        c.app.signup(&signup_body(s)).await;
    }
    let a = c.app.start_engine(c.app.engine_config("w1"));
    let b = c.app.start_engine(c.app.engine_config("w2"));
    for s in &slugs {
        let t = c.app.wait_for_state(s, &["active", "failed"], WITHIN).await;
        assert_eq!(t["state"], "active", "{t:#}");
    }
    a.stop().await;
    b.stop().await;
    let stats = c.proxy.stats();
    report(&stats, slugs.len());
    assert_eq!(stats.create_account_over_cap, 0);
    assert_eq!(
        stats.create_account_max_in_flight, 5,
        "the five slots were not all used"
    );
    assert_eq!(
        stats.create_account_started, 12,
        "one CreateAccount per tenant"
    );
    let h: i64 = sqlx::query_scalar("SELECT count(*) FROM history WHERE kind = 'step.queued'")
        .fetch_one(&c.app.pool)
        .await
        .unwrap();
    assert!(h > 0, "tenants queued for a slot");
    assert_exactly_one_of_everything(&c.moto_sdk, &slugs).await;
}

#[tokio::test]
async fn the_tenants_account_created_between_index_syncs_is_refused_by_aws_and_adopted() {
    let c = chaos(Duration::from_millis(200)).await;
    // The index was synced at start; someone creates the tenant's account afterwards, through AWS
    // (the proxy), which from then on refuses its e-mail as AWS does.
    let org = aws_sdk_organizations::Client::new(&moto::sdk(&c.proxy_url).await);
    let tag = aws_sdk_organizations::types::Tag::builder()
        .key("vend:tenant")
        .value("late")
        .build()
        .unwrap();
    let pre_id = made_by_hand(&org, "by hand", Some(tag)).await;
    c.app.signup(&signup_body("late")).await;
    let engine = c.app.start_engine(c.app.engine_config("w1"));
    let t = c
        .app
        .wait_for_state("late", &["active", "failed"], WITHIN)
        .await;
    engine.stop().await;
    assert_eq!(t["state"], "active", "{t:#}");
    assert_eq!(t["account_id"], pre_id.as_str());
    assert_eq!(t["resources"]["account_adopted"], "EMAIL_ALREADY_EXISTS");
    assert_eq!(c.proxy.stats().duplicate_emails_refused, 1);
    let n = aws_sdk_organizations::Client::new(&c.moto_sdk)
        .list_accounts()
        .send()
        .await
        .unwrap()
        .accounts()
        .len();
    assert_eq!(n, 2, "the management account and the adopted one");
}

#[tokio::test]
async fn a_foreign_account_refused_by_aws_as_a_duplicate_fails_the_tenant_untouched() {
    let c = chaos(Duration::from_millis(200)).await;
    let org = aws_sdk_organizations::Client::new(&moto::sdk(&c.proxy_url).await);
    let pre_id = made_by_hand(&org, "someone else's", None).await;
    c.app.signup(&signup_body("late")).await;
    let engine = c.app.start_engine(c.app.engine_config("w1"));
    let t = c
        .app
        .wait_for_state("late", &["active", "failed"], WITHIN)
        .await;
    engine.stop().await;
    assert_eq!(t["state"], "failed", "{t:#}");
    assert!(t["account_id"].is_null());
    assert!(
        t["steps"][1]["last_error"].to_string().contains(&pre_id),
        "{t:#}"
    );
    let moto_org = aws_sdk_organizations::Client::new(&c.moto_sdk);
    let tags = moto_org
        .list_tags_for_resource()
        .resource_id(&pre_id)
        .send()
        .await
        .unwrap();
    assert!(tags.tags().is_empty(), "the foreign account was tagged");
    assert!(
        moto::parent_of(&moto_org, &pre_id).await.starts_with("r-"),
        "the foreign account was moved"
    );
}

#[tokio::test]
async fn a_certificate_acm_does_not_show_yet_is_waited_for_not_requested_again() {
    let c = chaos_with(Duration::ZERO, |s| {
        s.certificates = vend::config::Certificates::PerAccount;
    })
    .await;
    // ACM is eventually consistent: right after RequestCertificate returns an ARN, DescribeCertificate
    // may not know it and ListCertificates may not list it. Here both lag for the first two looks.
    let not_found = || Scripted::Error {
        status: 400,
        code: "ResourceNotFoundException".into(),
    };
    c.proxy
        .script("acm.DescribeCertificate", [not_found(), not_found()]);
    let empty = || Scripted::Json(serde_json::json!({"CertificateSummaryList": []}));
    c.proxy.script("acm.ListCertificates", [empty(), empty()]);
    c.app.signup(&signup_body("acme")).await;
    let engine = c.app.start_engine(c.app.engine_config("w1"));
    let t = c
        .app
        .wait_for_state("acme", &["active", "failed"], WITHIN)
        .await;
    engine.stop().await;
    assert_eq!(t["state"], "active", "{t:#}");
    let stats = c.proxy.stats();
    assert_eq!(stats.operations["acm.DescribeCertificate"].scripted, 2);
    assert_eq!(stats.operations["acm.ListCertificates"].scripted, 2);

    // One certificate in the tenant's account, the one recorded and used by the domain.
    let account = t["account_id"].as_str().unwrap().to_owned();
    let inside = moto::sdk_in(&c.moto_sdk, &account).await;
    moto::the_one_certificate(&inside, &format!("acme.{BASE_DOMAIN}"), &t).await;
}

/// The quality bar's "fail it at each point and resume", for every AWS call a tenant's vending makes:
/// one tenant per operation, the answer of that operation's next call lost after AWS acted on it (the
/// worst failure: the caller cannot tell whether it happened). Every tenant still ends active with
/// exactly one of everything.
#[tokio::test]
async fn losing_the_answer_of_any_single_aws_call_still_vends_and_offboards_exactly_once() {
    let c = chaos(Duration::ZERO).await;
    let engine = c.app.start_engine(c.app.engine_config("w1"));
    // A clean run names the operations vending a tenant calls.
    c.proxy.reset_stats();
    c.app.signup(&signup_body("clean")).await;
    c.app.wait_for_state("clean", &["active"], WITHIN).await;
    let ops: Vec<String> = c
        .proxy
        .stats()
        .operations
        .into_iter()
        .filter(|(_, s)| s.calls > 0)
        .map(|(op, _)| op)
        .collect();
    assert!(ops.len() >= 10, "too few operations seen: {ops:?}");
    let mut slugs = vec!["clean".to_owned()];
    for (i, op) in ops.iter().enumerate() {
        let slug = format!("lost-{i}");
        c.proxy.script(op, [Scripted::LoseResponse]);
        c.app.signup(&signup_body(&slug)).await;
        let t = c
            .app
            .wait_for_state(&slug, &["active", "failed"], WITHIN)
            .await;
        assert_eq!(t["state"], "active", "answer of {op} lost: {t:#}");
        slugs.push(slug);
    }
    moto::assert_exactly_one_of_everything(&c.moto_sdk, &slugs).await;

    // The same for offboarding: a clean offboard names its operations, then each one's answer is
    // lost once while offboarding another tenant. Each ends closed with nothing of it left.
    let accounts: std::collections::BTreeMap<String, String> =
        sqlx::query_as("SELECT slug, resources->>'account_id' FROM tenants")
            .fetch_all(&c.app.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    let offboard = |slug: String| {
        let app = &c.app;
        async move {
            let r = app
                .ops(
                    reqwest::Method::POST,
                    &format!("/v1/tenants/{slug}/offboard"),
                    Some(serde_json::json!({"reason": "lost answers"})),
                )
                .await;
            assert_eq!(r.status(), 202);
            app.wait_for_state(&slug, &["closed"], WITHIN).await
        }
    };
    c.proxy.reset_stats();
    offboard("clean".to_owned()).await;
    let ops: Vec<String> = c
        .proxy
        .stats()
        .operations
        .into_iter()
        .filter(|(_, s)| s.calls > 0)
        .map(|(op, _)| op)
        .collect();
    assert!(
        ops.len() >= 6,
        "too few offboarding operations seen: {ops:?}"
    );
    assert!(ops.len() < slugs.len(), "{ops:?}");
    for (op, slug) in ops.iter().zip(slugs.iter().skip(1)) {
        c.proxy.script(op, [Scripted::LoseResponse]);
        offboard(slug.clone()).await;
    }
    engine.stop().await;
    for slug in slugs.iter().take(ops.len() + 1) {
        let left = crate::offboard::remains(&c.moto_sdk, slug, &accounts[slug]).await;
        assert!(
            !left.record && !left.domain && !left.stack && left.account_status == "SUSPENDED",
            "{slug}: {left:?}"
        );
    }
}
