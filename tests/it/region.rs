//! Data residency against moto: a tenant that asks for an allowed region gets its stack, custom domain
//! and certificate there (and is torn down there); other regions are refused at signup.

use std::time::Duration;

use aws_config::SdkConfig;
use reqwest::Method;
use serde_json::{Value, json};

use crate::support::moto::{self, BASE_DOMAIN, OTHER_REGION, REGION};
use crate::support::{signup_body, spawn_silo_graced};

const WITHIN: Duration = Duration::from_secs(60);

fn in_region(sdk: &SdkConfig, region: &str) -> SdkConfig {
    sdk.to_builder()
        .region(aws_config::Region::new(region.to_owned()))
        .build()
}

/// (tenant stacks, custom domains for `slug`) in `region` of the account.
async fn homes(inside: &SdkConfig, region: &str, slug: &str) -> (usize, usize) {
    let there = in_region(inside, region);
    let stacks = aws_sdk_cloudformation::Client::new(&there)
        .list_stacks()
        .send()
        .await
        .unwrap()
        .stack_summaries()
        .iter()
        .filter(|s| {
            s.stack_name() == Some("vend-tenant")
                && s.stack_status()
                    .is_some_and(|x| x.as_str() != "DELETE_COMPLETE")
        })
        .count();
    let domains = aws_sdk_apigateway::Client::new(&there)
        .get_domain_names()
        .send()
        .await
        .unwrap()
        .items()
        .iter()
        .filter(|d| d.domain_name() == Some(&format!("{slug}.{BASE_DOMAIN}")))
        .count();
    (stacks, domains)
}

#[tokio::test]
async fn a_tenant_lives_in_the_region_it_asked_for_and_others_are_refused() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let (app, _rt) = spawn_silo_graced(&moto.url, |_| {}, Duration::ZERO).await;

    // Regions that are not allowed, or not regions at all, are refused and store nothing.
    for bad in ["ap-south-1", "mars", ""] {
        let mut body = signup_body("nowhere");
        body["region"] = json!(bad);
        let r = app.signup(&body).await;
        assert_eq!(r.status(), 400, "region {bad:?}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "invalid_region", "{e:#}");
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM tenants")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);

    let mut eu = signup_body("acme");
    eu["region"] = json!(OTHER_REGION);
    let r = app.signup(&eu).await;
    assert_eq!(r.status(), 202);
    assert_eq!(
        r.json::<Value>().await.unwrap()["tenant"]["region"],
        OTHER_REGION
    );
    app.signup(&signup_body("globex")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    let acme = app.wait_for_state("acme", &["active"], WITHIN).await;
    let globex = app.wait_for_state("globex", &["active"], WITHIN).await;
    assert_eq!(acme["region"], OTHER_REGION);
    assert_eq!(globex["region"], REGION, "no region asked: vend's own");

    let account = acme["account_id"].as_str().unwrap();
    let inside = moto::sdk_in(&sdk, account).await;
    assert_eq!(homes(&inside, OTHER_REGION, "acme").await, (1, 1));
    assert_eq!(homes(&inside, REGION, "acme").await, (0, 0));
    // The central record points at the domain in the tenant's region.
    let target = aws_sdk_apigateway::Client::new(&in_region(&inside, OTHER_REGION))
        .get_domain_name()
        .domain_name(format!("acme.{BASE_DOMAIN}"))
        .send()
        .await
        .unwrap()
        .regional_domain_name()
        .unwrap()
        .to_owned();
    let records = moto::records_named(&sdk, &format!("acme.{BASE_DOMAIN}")).await;
    let record = records.first().expect("acme's record");
    assert_eq!(
        record
            .alias_target()
            .unwrap()
            .dns_name()
            .trim_end_matches('.'),
        target
    );
    let globex_inside = moto::sdk_in(&sdk, globex["account_id"].as_str().unwrap()).await;
    assert_eq!(homes(&globex_inside, REGION, "globex").await, (1, 1));

    // Offboarding tears the tenant down where it lives.
    let r = app
        .ops(
            Method::POST,
            "/v1/tenants/acme/offboard",
            Some(json!({"reason": "residency test"})),
        )
        .await;
    assert_eq!(r.status(), 202);
    app.wait_for_state("acme", &["closed"], WITHIN).await;
    assert_eq!(homes(&inside, OTHER_REGION, "acme").await, (0, 0));
    engine.stop().await;
}
