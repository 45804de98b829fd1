//! The pool against moto: free and pro signups never get an account of their own. The first one makes
//! the pool (its account, created once; its stack; a usage plan per tier; the wildcard domain); each
//! tenant gets a tagged API key on its tier's plan, an item in the tenant table and its own record.

use std::time::Duration;

use aws_config::SdkConfig;
use serde_json::{Value, json};

use crate::drift::open_findings;
use crate::support::moto::{self, BASE_DOMAIN};
use crate::support::{EngineHandle, TestApp, fast_enterprise_toml, signup_body, spawn_silo_with};

const WITHIN: Duration = Duration::from_secs(90);

fn pooled(slug: &str, tier: &str) -> Value {
    let mut b = signup_body(slug);
    b["tier"] = json!(tier);
    b
}

/// The pool account's id as vend recorded it.
async fn pool_account(pool: &sqlx::PgPool) -> String {
    sqlx::query_scalar("SELECT state->>'account_id' FROM pool")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// (plan name, key ids on it) of every usage plan in the pool account.
async fn plans(inside: &SdkConfig) -> Vec<(String, Vec<String>)> {
    let gw = aws_sdk_apigateway::Client::new(inside);
    let mut out = Vec::new();
    for p in gw.get_usage_plans().send().await.unwrap().items() {
        let keys = gw
            .get_usage_plan_keys()
            .usage_plan_id(p.id().unwrap())
            .send()
            .await
            .unwrap()
            .items()
            .iter()
            .map(|k| k.id().unwrap().to_owned())
            .collect::<Vec<_>>();
        let mut keys = keys;
        keys.sort();
        out.push((p.name().unwrap().to_owned(), keys));
    }
    out.sort();
    out
}

/// The API keys of the pool account tagged `vend:tenant=<slug>`.
pub async fn tenant_keys(inside: &SdkConfig, slug: &str) -> Vec<String> {
    aws_sdk_apigateway::Client::new(inside)
        .get_api_keys()
        .send()
        .await
        .unwrap()
        .items()
        .iter()
        .filter(|k| {
            k.tags()
                .and_then(|t| t.get("vend:tenant"))
                .map(String::as_str)
                == Some(slug)
        })
        .map(|k| k.id().unwrap().to_owned())
        .collect()
}

/// The tier in the pool's tenant table item of `slug`, if it has one.
pub async fn table_item(inside: &SdkConfig, slug: &str) -> Option<String> {
    aws_sdk_dynamodb::Client::new(inside)
        .get_item()
        .table_name("vend-pool-tenants")
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S(slug.into()),
        )
        .send()
        .await
        .unwrap()
        .item()
        .map(|i| i["tier"].as_s().unwrap().clone())
}

/// The target the tenant's record in the central zone aliases.
pub async fn record_target(sdk: &SdkConfig, slug: &str) -> Option<String> {
    let rs = moto::records_named(sdk, &format!("{slug}.{BASE_DOMAIN}")).await;
    assert!(rs.len() <= 1, "one record per name: {rs:?}");
    rs.first()
        .and_then(|r| r.alias_target())
        .map(|a| a.dns_name().trim_end_matches('.').to_owned())
}

#[tokio::test]
async fn free_and_pro_signups_join_one_pool_and_never_create_an_account() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let (app, _rt) = spawn_silo_with(sdk.clone(), None, |_| {}, &fast_enterprise_toml()).await;
    let org = aws_sdk_organizations::Client::new(&sdk);
    let accounts = |org: aws_sdk_organizations::Client| async move {
        org.list_accounts().send().await.unwrap().accounts().len()
    };
    let before = accounts(org.clone()).await;

    for (slug, tier) in [("freddy", "free"), ("pam", "pro"), ("fiona", "free")] {
        assert_eq!(app.signup(&pooled(slug, tier)).await.status(), 202);
    }
    let engine = app.start_engine(app.engine_config("w1"));
    for slug in ["freddy", "pam", "fiona"] {
        let t = app.wait_for_state(slug, &["active"], WITHIN).await;
        assert_eq!(t["account_id"], Value::Null, "{t:#}");
        assert_eq!(t["endpoint"], format!("https://{slug}.{BASE_DOMAIN}"));
    }
    // One account more: the pool's, made once for all three, in the tenant OU, tagged as vend's.
    assert_eq!(accounts(org.clone()).await, before + 1);
    let account = pool_account(&app.pool).await;
    assert_eq!(
        moto::parent_of(&org, &account).await,
        moto::tenant_ou_id(&org).await
    );
    let tags = org
        .list_tags_for_resource()
        .resource_id(&account)
        .send()
        .await
        .unwrap();
    assert!(
        tags.tags()
            .iter()
            .any(|t| t.key() == "vend:tenant" && t.value() == "pool"),
        "{tags:?}"
    );

    let inside = moto::sdk_in(&sdk, &account).await;
    let by_slug = |slug: &str| {
        let inside = inside.clone();
        let slug = slug.to_owned();
        async move {
            let keys = tenant_keys(&inside, &slug).await;
            assert_eq!(keys.len(), 1, "{slug}: one key");
            keys[0].clone()
        }
    };
    let (freddy, pam, fiona) = (
        by_slug("freddy").await,
        by_slug("pam").await,
        by_slug("fiona").await,
    );
    let mut free = vec![freddy.clone(), fiona.clone()];
    free.sort();
    assert_eq!(
        plans(&inside).await,
        vec![
            ("vend-pool-free".to_owned(), free),
            ("vend-pool-pro".to_owned(), vec![pam.clone()]),
        ]
    );
    // The tiers' limits are the workflow file's.
    let gw = aws_sdk_apigateway::Client::new(&inside);
    let all = gw.get_usage_plans().send().await.unwrap();
    let pro = all
        .items()
        .iter()
        .find(|p| p.name() == Some("vend-pool-pro"))
        .unwrap();
    assert_eq!(pro.throttle().unwrap().rate_limit(), 50.0);
    assert_eq!(pro.throttle().unwrap().burst_limit(), 100);
    assert_eq!(pro.quota().unwrap().limit(), 1_000_000);

    // Each tenant is in the table with its key, and its name aliases the pool's wildcard domain.
    let ddb = aws_sdk_dynamodb::Client::new(&inside);
    let item = ddb
        .get_item()
        .table_name("vend-pool-tenants")
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("pam".into()),
        )
        .send()
        .await
        .unwrap();
    let item = item.item().expect("pam is registered");
    assert_eq!(item["tier"].as_s().unwrap(), "pro");
    assert_eq!(item["api_key_id"].as_s().unwrap(), &pam);
    let domains = gw.get_domain_names().send().await.unwrap();
    let wildcard = domains
        .items()
        .iter()
        .find(|d| d.domain_name() == Some(&format!("*.{BASE_DOMAIN}")))
        .expect("the pool's wildcard domain");
    let pool_target = wildcard.regional_domain_name().unwrap().to_owned();
    for slug in ["freddy", "pam", "fiona"] {
        assert_eq!(
            record_target(&sdk, slug).await.as_deref(),
            Some(pool_target.as_str())
        );
    }
    // Mapped to the pooled API (read through vend's adapter: moto needs the `*` unescaped).
    let vend_gw = vend::aws::apigateway::ApiGateway::new(&vend::aws::Aws::new(
        inside.clone(),
        vend::telemetry::Metrics::new(),
    ));
    let pool_api: String = sqlx::query_scalar("SELECT state->>'api_id' FROM pool")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let mapping = vend_gw
        .root_mapping(&format!("*.{BASE_DOMAIN}"))
        .await
        .unwrap()
        .expect("the wildcard domain is mapped");
    assert_eq!(mapping.rest_api_id, pool_api);

    // Every pool step again changes nothing: no second key, plan entry, record or account.
    for step in [
        "prepare_pool",
        "issue_api_key",
        "register_tenant",
        "route_domain",
    ] {
        let t = app.requeue_and_settle("pam", step, WITHIN).await;
        assert_eq!(t["state"], "active", "{step}: {t:#}");
    }
    assert_eq!(tenant_keys(&inside, "pam").await, vec![pam.clone()]);
    assert_eq!(plans(&inside).await[1].1, vec![pam]);
    assert_eq!(accounts(org).await, before + 1);
    assert_eq!(
        record_target(&sdk, "pam").await.as_deref(),
        Some(pool_target.as_str())
    );
    engine.stop().await;
}

#[tokio::test]
async fn a_crash_after_the_pools_create_account_ends_with_one_pool_account() {
    let crate::aws::CrashRig {
        moto: _moto,
        sdk,
        orgs,
        app,
        rt: _rt,
    } = crate::aws::CrashRig::start(true).await;
    let org = aws_sdk_organizations::Client::new(&sdk);
    let before = org.list_accounts().send().await.unwrap().accounts().len();
    app.signup(&pooled("freddy", "free")).await;
    app.signup(&pooled("pam", "pro")).await;

    let mut config = app.engine_config("doomed");
    config.lease = Duration::from_secs(1);
    let doomed = app.start_engine(config.clone());
    orgs.called.notified().await;
    doomed.kill().await;
    // AWS is creating the pool account; vend recorded only its intent.
    let state: Value = sqlx::query_scalar("SELECT state FROM pool")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(state["create_intent_at"].is_string(), "{state:#}");
    assert!(state.get("create_request_id").is_none(), "{state:#}");

    config.worker_id = "survivor".into();
    let survivor = app.start_engine(config);
    for slug in ["freddy", "pam"] {
        let t = app.wait_for_state(slug, &["active"], WITHIN).await;
        assert_eq!(t["account_id"], Value::Null);
    }
    survivor.stop().await;
    // One pool account, the one the lost call made, and no tenant account.
    let accounts = org.list_accounts().send().await.unwrap();
    assert_eq!(accounts.accounts().len(), before + 1);
    let account = pool_account(&app.pool).await;
    assert!(
        accounts
            .accounts()
            .iter()
            .any(|a| a.id() == Some(account.as_str()))
    );
}

#[tokio::test]
async fn a_configured_pool_account_is_used_as_it_is_with_its_own_wildcard_certificate() {
    // moto issues a certificate this long after its request, as if its DNS validation took that.
    let moto = moto::start_with(&[("MOTO_ACM_VALIDATION_WAIT", "2")]).await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let org = aws_sdk_organizations::Client::new(&sdk);
    // An account the platform team made for the pool, left at the root.
    let account = moto::create_account(&sdk, "pool@platform.example", "platform-pool").await;
    let parent = moto::parent_of(&org, &account).await;
    let before = org.list_accounts().send().await.unwrap().accounts().len();
    let configured = account.clone();
    let (app, _rt) = spawn_silo_with(
        sdk.clone(),
        None,
        move |s| {
            s.pool_account_id = Some(configured);
            s.certificates = vend::config::Certificates::PerAccount;
        },
        &fast_enterprise_toml(),
    )
    .await;
    app.signup(&pooled("freddy", "free")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    let t = app.wait_for_state("freddy", &["active"], WITHIN).await;
    engine.stop().await;
    assert_eq!(t["account_id"], Value::Null);
    assert_eq!(pool_account(&app.pool).await, account);
    // Not created, not moved: vend uses it as it is.
    assert_eq!(
        org.list_accounts().send().await.unwrap().accounts().len(),
        before
    );
    assert_eq!(moto::parent_of(&org, &account).await, parent);
    // The wildcard domain has the pool account's own certificate, validated in the central zone.
    let inside = moto::sdk_in(&sdk, &account).await;
    let certs = moto::certificates_in(&inside, &format!("*.{BASE_DOMAIN}")).await;
    assert_eq!(certs.len(), 1, "{certs:?}");
    assert_eq!(tenant_keys(&inside, "freddy").await.len(), 1);
    assert!(record_target(&sdk, "freddy").await.is_some());
}

/// moto, its SDK, vend with its engine running, and two active pool tenants: `free` on the free
/// plan and `pam` on the pro plan.
async fn two_pool_tenants(
    free: &str,
) -> (
    moto::Moto,
    SdkConfig,
    TestApp,
    vend::app::AwsRuntime,
    EngineHandle,
) {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let (app, rt) = spawn_silo_with(sdk.clone(), None, |_| {}, &fast_enterprise_toml()).await;
    for (slug, tier) in [(free, "free"), ("pam", "pro")] {
        app.signup(&pooled(slug, tier)).await;
    }
    let engine = app.start_engine(app.engine_config("w1"));
    for slug in [free, "pam"] {
        app.wait_for_state(slug, &["active"], WITHIN).await;
    }
    (moto, sdk, app, rt, engine)
}

/// A drift checker that finds every tenant due.
fn drift_checker(
    rt: &vend::app::AwsRuntime,
    app: &TestApp,
    repair: bool,
) -> vend::drift::DriftChecker {
    vend::drift::DriftChecker {
        silo: rt.silo.clone(),
        workflows: app.workflows.clone(),
        interval: Duration::from_millis(1),
        repair,
    }
}

/// Waits until the pool's drift check finds nothing.
async fn pool_reads_clean(checker: &vend::drift::DriftChecker) {
    let deadline = tokio::time::Instant::now() + WITHIN;
    while !checker.check_pool().await.unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pool was not repaired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_pool_drifting_is_found_and_repaired_with_the_keys_back_on_their_plans() {
    let (_moto, sdk, app, rt, engine) = two_pool_tenants("freddy").await;
    let checker = |repair| drift_checker(&rt, &app, repair);
    assert!(checker(false).check_pool().await.unwrap().is_empty());
    let before = plans(&moto::sdk_in(&sdk, &pool_account(&app.pool).await).await).await;

    // Someone deletes the pro plan, loosens the free plan and unmaps the wildcard domain.
    let inside = moto::sdk_in(&sdk, &pool_account(&app.pool).await).await;
    let gw = aws_sdk_apigateway::Client::new(&inside);
    for p in gw.get_usage_plans().send().await.unwrap().items() {
        match p.name() {
            Some("vend-pool-pro") => {
                for k in gw
                    .get_usage_plan_keys()
                    .usage_plan_id(p.id().unwrap())
                    .send()
                    .await
                    .unwrap()
                    .items()
                {
                    gw.delete_usage_plan_key()
                        .usage_plan_id(p.id().unwrap())
                        .key_id(k.id().unwrap())
                        .send()
                        .await
                        .unwrap();
                }
                gw.delete_usage_plan()
                    .usage_plan_id(p.id().unwrap())
                    .send()
                    .await
                    .unwrap();
            }
            Some("vend-pool-free") => {
                gw.update_usage_plan()
                    .usage_plan_id(p.id().unwrap())
                    .patch_operations(
                        aws_sdk_apigateway::types::PatchOperation::builder()
                            .op(aws_sdk_apigateway::types::Op::Replace)
                            .path("/throttle/rateLimit")
                            .value("1000")
                            .build(),
                    )
                    .send()
                    .await
                    .unwrap();
            }
            _ => {}
        }
    }
    let vend_gw = vend::aws::apigateway::ApiGateway::new(&vend::aws::Aws::new(
        inside.clone(),
        vend::telemetry::Metrics::new(),
    ));
    assert!(
        vend_gw
            .delete_root_mapping(&format!("*.{BASE_DOMAIN}"))
            .await
            .unwrap()
    );

    // Reported without repair: nothing changes but the pool is no longer taken as ready.
    let found = checker(false).check_pool().await.unwrap();
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(
        found
            .iter()
            .any(|f| f.contains("vend-pool-pro") && f.contains("gone"))
    );
    assert!(found.iter().any(|f| f.contains("vend-pool-free")));
    assert!(found.iter().any(|f| f.contains("not mapped")));
    // Repaired: the pool tenants are requeued from prepare_pool and everything comes back.
    assert_eq!(checker(true).check_pool().await.unwrap().len(), 3);
    pool_reads_clean(&checker(false)).await;
    for slug in ["freddy", "pam"] {
        app.wait_for_state(slug, &["active"], WITHIN).await;
    }
    let after = plans(&inside).await;
    // The same keys on plans of the same names (pro's is a new plan).
    assert_eq!(after, before);
    assert_eq!(tenant_keys(&inside, "pam").await.len(), 1);
    engine.stop().await;
}

/// (rate limit, burst limit) of the usage plan `name` in the pool account.
async fn throttle(inside: &SdkConfig, name: &str) -> (f64, i32) {
    let gw = aws_sdk_apigateway::Client::new(inside);
    let plans = gw.get_usage_plans().send().await.unwrap();
    let p = plans
        .items()
        .iter()
        .find(|p| p.name() == Some(name))
        .expect("the usage plan exists");
    let t = p.throttle().unwrap();
    (t.rate_limit(), t.burst_limit())
}

#[tokio::test]
async fn a_tier_limit_changed_in_workflows_reaches_its_usage_plan_after_a_restart() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let toml = fast_enterprise_toml();
    let (app, rt) = spawn_silo_with(sdk.clone(), None, |_| {}, &toml).await;
    for (slug, tier) in [("freddy", "free"), ("pam", "pro")] {
        app.signup(&pooled(slug, tier)).await;
    }
    let engine = app.start_engine(app.engine_config("w1"));
    for slug in ["freddy", "pam"] {
        app.wait_for_state(slug, &["active"], WITHIN).await;
    }
    engine.stop().await;
    let inside = moto::sdk_in(&sdk, &pool_account(&app.pool).await).await;
    assert_eq!(throttle(&inside, "vend-pool-free").await, (5.0, 10));
    let checker = |workflows| vend::drift::DriftChecker {
        silo: rt.silo.clone(),
        workflows,
        interval: Duration::from_secs(3600),
        repair: false,
    };
    // Unchanged workflows: nothing to converge.
    assert!(
        !checker(app.workflows.clone())
            .converge_pool()
            .await
            .unwrap()
    );

    // vend restarts with the free tier's limits raised (and only those).
    let raised = crate::support::workflows_with_pool(&toml, |pool| {
        pool.replacen(
            "rate_limit = 5.0\nburst_limit = 10",
            "rate_limit = 8.0\nburst_limit = 16",
            1,
        )
    });
    let registry = vend::steps::registry(rt.silo.clone(), raised.clone());
    let engine = app.start_engine_with(raised.clone(), registry, app.engine_config("w2"));
    assert!(checker(raised.clone()).converge_pool().await.unwrap());
    let deadline = tokio::time::Instant::now() + WITHIN;
    while throttle(&inside, "vend-pool-free").await != (8.0, 16) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the free plan kept its old limits"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for slug in ["freddy", "pam"] {
        app.wait_for_state(slug, &["active"], WITHIN).await;
    }
    // Converged once: the pool is current and no drift is left.
    let deadline = tokio::time::Instant::now() + WITHIN;
    while checker(raised.clone()).converge_pool().await.unwrap() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the pool never became current"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        checker(raised.clone())
            .check_pool()
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(throttle(&inside, "vend-pool-pro").await, (50.0, 100));
    assert_eq!(tenant_keys(&inside, "freddy").await.len(), 1);
    engine.stop().await;
}

#[tokio::test]
async fn each_pool_tenants_place_is_checked_for_drift_and_repaired_by_its_own_step() {
    // zoe sorts last in the zone: moto refuses a CREATE it was sent before, once deleted, when any
    // record sorts after the name (its existence check lists from the name on); AWS does not.
    let (_moto, sdk, app, rt, engine) = two_pool_tenants("zoe").await;
    let checker = |repair| drift_checker(&rt, &app, repair);
    assert_eq!(checker(false).check_due(10).await.unwrap(), 2);
    assert_eq!(open_findings(&app).await, vec![]);
    let inside = moto::sdk_in(&sdk, &pool_account(&app.pool).await).await;
    let target = record_target(&sdk, "zoe").await.unwrap();

    // Someone deletes zoe's record and its item in the tenant table, and pam's API key.
    moto::delete_record(&sdk, &format!("zoe.{BASE_DOMAIN}")).await;
    aws_sdk_dynamodb::Client::new(&inside)
        .delete_item()
        .table_name("vend-pool-tenants")
        .key(
            "pk",
            aws_sdk_dynamodb::types::AttributeValue::S("zoe".into()),
        )
        .send()
        .await
        .unwrap();
    let gw = aws_sdk_apigateway::Client::new(&inside);
    let old_key = tenant_keys(&inside, "pam").await.remove(0);
    gw.delete_api_key().api_key(&old_key).send().await.unwrap();

    // Reported, and nothing changes without repair.
    assert_eq!(checker(false).check_due(10).await.unwrap(), 2);
    let found = vec![
        ("pam".to_owned(), "apigateway.api_key".to_owned()),
        ("zoe".to_owned(), "dns.record".to_owned()),
        ("zoe".to_owned(), "dynamodb.tenant".to_owned()),
    ];
    assert_eq!(open_findings(&app).await, found);
    assert_eq!(record_target(&sdk, "zoe").await, None);

    // Repaired: each tenant reruns the step that makes what is missing; the findings close.
    assert_eq!(checker(true).check_due(10).await.unwrap(), 2);
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        checker(false).check_due(10).await.unwrap();
        if open_findings(&app).await.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not repaired: {:?}",
            open_findings(&app).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for slug in ["zoe", "pam"] {
        app.wait_for_state(slug, &["active"], WITHIN).await;
    }
    assert_eq!(record_target(&sdk, "zoe").await.as_ref(), Some(&target));
    assert_eq!(table_item(&inside, "zoe").await.as_deref(), Some("free"));
    let new_key = tenant_keys(&inside, "pam").await;
    assert_eq!(new_key.len(), 1);
    assert_ne!(new_key[0], old_key);
    assert!(
        plans(&inside)
            .await
            .iter()
            .any(|(plan, keys)| plan == "vend-pool-pro" && keys.contains(&new_key[0]))
    );

    // The wildcard domain deleted and made again: every tenant's record follows it.
    let vend_gw = vend::aws::apigateway::ApiGateway::new(&vend::aws::Aws::new(
        inside.clone(),
        vend::telemetry::Metrics::new(),
    ));
    let wildcard = format!("*.{BASE_DOMAIN}");
    vend_gw.delete_root_mapping(&wildcard).await.unwrap();
    assert!(vend_gw.delete_domain(&wildcard).await.unwrap());
    assert_eq!(checker(true).check_pool().await.unwrap().len(), 1);
    pool_reads_clean(&checker(false)).await;
    for slug in ["zoe", "pam"] {
        app.wait_for_state(slug, &["active"], WITHIN).await;
    }
    let now: String = sqlx::query_scalar("SELECT state->>'domain_target' FROM pool")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        vend_gw
            .get_domain(&wildcard)
            .await
            .unwrap()
            .unwrap()
            .regional_domain_name,
        now
    );
    assert_ne!(now, target, "a new domain has a new target");
    for slug in ["zoe", "pam"] {
        assert_eq!(
            record_target(&sdk, slug).await.as_deref(),
            Some(now.as_str())
        );
    }
    engine.stop().await;
}
