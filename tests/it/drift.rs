//! Drift against moto: someone changes a vended tenant's AWS side behind vend's back; the checker
//! reports each change, `VEND_DRIFT_REPAIR=auto` repairs what is vend's and closes the findings, and a
//! record someone else pointed elsewhere is reported, never taken over.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_route53::types::{
    Change, ChangeAction, ChangeBatch, ResourceRecord, ResourceRecordSet, RrType,
};
use reqwest::Method;
use serde_json::Value;
use vend::drift::DriftChecker;

use crate::aws::assert_contract_holds;
use crate::support::moto::{self, BASE_DOMAIN};
use crate::support::{TestApp, signup_body, spawn_silo};

const WITHIN: Duration = Duration::from_secs(60);

pub async fn open_findings(app: &TestApp) -> Vec<(String, String)> {
    let r = app.ops(Method::GET, "/v1/drift", None).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let mut out: Vec<(String, String)> = v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["slug"].as_str().unwrap().to_owned(),
                f["resource"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn drift_is_reported_repaired_when_vends_and_never_taken_over_when_not() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let (app, rt) = spawn_silo(&moto.url, |_| {}, None).await;
    app.signup(&signup_body("acme")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    let t = app.wait_for_state("acme", &["active"], WITHIN).await;
    let account = t["account_id"].as_str().unwrap().to_owned();
    // Every check is due at once: the interval is a millisecond.
    let checker = |repair| DriftChecker {
        silo: rt.silo.clone(),
        workflows: app.workflows.clone(),
        interval: Duration::from_millis(1),
        repair,
    };
    let report = Arc::new(checker(false));
    assert_eq!(report.check_due(10).await.unwrap(), 1);
    assert_eq!(open_findings(&app).await, vec![]);

    // Behind vend's back: the account moved to the root, an SCP detached, its vend:tenant tag
    // removed and its vend:tier tag changed, the record deleted, the mapping deleted, the tenant
    // stack updated from another template.
    let org = aws_sdk_organizations::Client::new(&sdk);
    let ou = rt.silo.management.tenant_ou_id.clone();
    let root = rt.silo.management.root_id.clone();
    org.move_account()
        .account_id(&account)
        .source_parent_id(&ou)
        .destination_parent_id(&root)
        .send()
        .await
        .unwrap();
    let attached = org
        .list_policies_for_target()
        .target_id(&ou)
        .filter(aws_sdk_organizations::types::PolicyType::ServiceControlPolicy)
        .send()
        .await
        .unwrap();
    let scp = attached
        .policies()
        .iter()
        .find(|p| p.name().is_some_and(|n| n.starts_with("vend-")))
        .unwrap();
    let scp_name = scp.name().unwrap().to_owned();
    org.detach_policy()
        .policy_id(scp.id().unwrap())
        .target_id(&ou)
        .send()
        .await
        .unwrap();
    org.untag_resource()
        .resource_id(&account)
        .tag_keys("vend:tenant")
        .send()
        .await
        .unwrap();
    org.tag_resource()
        .resource_id(&account)
        .tags(
            aws_sdk_organizations::types::Tag::builder()
                .key("vend:tier")
                .value("free")
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    // Someone else's policy with vend's prefix, not attached: not vend's, so not a finding.
    org.create_policy()
        .name("vend-someone-elses")
        .description("made by hand")
        .content(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Deny","Action":"s3:*","Resource":"*"}]}"#)
        .r#type(aws_sdk_organizations::types::PolicyType::ServiceControlPolicy)
        .send()
        .await
        .unwrap();
    let r53 = aws_sdk_route53::Client::new(&sdk);
    let zone = moto::base_zone_id(&r53).await;
    let domain = format!("acme.{BASE_DOMAIN}");
    let record = moto::delete_record(&sdk, &domain).await;
    let target = record.alias_target().unwrap().clone();
    let inside = moto::sdk_in(&sdk, &account).await;
    aws_sdk_apigateway::Client::new(&inside)
        .delete_base_path_mapping()
        .domain_name(&domain)
        .base_path("(none)")
        .send()
        .await
        .unwrap();

    let shipped = std::fs::read_to_string(
        crate::support::postgres::repo_root().join("templates/tenant-stack.yaml"),
    )
    .unwrap();
    let cfn = aws_sdk_cloudformation::Client::new(&inside);
    let running = || async {
        cfn.get_template()
            .stack_name(vend::steps::TENANT_STACK)
            .send()
            .await
            .unwrap()
            .template_body()
            .unwrap()
            .to_owned()
    };
    assert_eq!(running().await, shipped);
    let edited = shipped.replacen("Description: >-", "Description: >-\n  Edited by hand.", 1);
    cfn.update_stack()
        .stack_name(vend::steps::TENANT_STACK)
        .template_body(&edited)
        .parameters(
            aws_sdk_cloudformation::types::Parameter::builder()
                .parameter_key("TenantSlug")
                .use_previous_value(true)
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        moto::stack_status(&inside, vend::steps::TENANT_STACK)
            .await
            .as_deref(),
        Some("UPDATE_COMPLETE")
    );

    // Reported, each one, with nothing changed.
    assert_eq!(report.check_due(10).await.unwrap(), 1);
    let acme = |r: &str| ("acme".to_owned(), r.to_owned());
    let mut want = vec![
        acme("account.parent"),
        acme("account.tags"),
        acme("apigateway.mapping"),
        acme("dns.record"),
        acme(&format!("ou.scp:{scp_name}")),
        acme("stack.template"),
    ];
    want.sort();
    assert_eq!(open_findings(&app).await, want);
    let events: Vec<Value> = sqlx::query_scalar(
        "SELECT payload FROM events WHERE type = 'tenant.drift.detected' ORDER BY created_at",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(events.len(), 1, "one event for the check that found them");
    assert_eq!(events[0]["findings"].as_array().unwrap().len(), 6);
    assert_eq!(running().await, edited, "a report changes nothing");
    let o = app
        .ops(Method::GET, "/v1/drift?tenant=nobody", None)
        .await
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(o["findings"], serde_json::json!([]));

    // Repaired: the account moved back, the SCP attached again, the domain step rerun; the next
    // check finds nothing and the findings are closed.
    let repair = Arc::new(checker(true));
    assert_eq!(repair.check_due(10).await.unwrap(), 1);
    app.wait_for_state("acme", &["active"], WITHIN).await;
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        if app.tenant("acme").await["state"] == "active" {
            report.check_due(10).await.unwrap();
            if open_findings(&app).await.is_empty() {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "drift never closed: {:?}",
            open_findings(&app).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(assert_contract_holds(&sdk, "acme").await, account);
    assert_eq!(running().await, shipped, "vend's template is back");
    let tags = org
        .list_tags_for_resource()
        .resource_id(&account)
        .send()
        .await
        .unwrap();
    let tag = |k: &str| {
        tags.tags()
            .iter()
            .find(|t| t.key() == k)
            .map(|t| t.value().to_owned())
    };
    assert_eq!(tag("vend:tenant").as_deref(), Some("acme"));
    assert_eq!(tag("vend:tier").as_deref(), Some("enterprise"));

    // Someone points the tenant's name elsewhere: reported, and repair leaves it alone.
    let elsewhere = ResourceRecordSet::builder()
        .name(format!("{domain}."))
        .r#type(RrType::Cname)
        .ttl(60)
        .resource_records(
            ResourceRecord::builder()
                .value("www.example.org")
                .build()
                .unwrap(),
        )
        .build()
        .unwrap();
    let ours = ResourceRecordSet::builder()
        .name(format!("{domain}."))
        .r#type(RrType::A)
        .alias_target(target)
        .build()
        .unwrap();
    r53.change_resource_record_sets()
        .hosted_zone_id(&zone)
        .change_batch(
            ChangeBatch::builder()
                .changes(
                    Change::builder()
                        .action(ChangeAction::Delete)
                        .resource_record_set(ours)
                        .build()
                        .unwrap(),
                )
                .changes(
                    Change::builder()
                        .action(ChangeAction::Create)
                        .resource_record_set(elsewhere)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();
    repair.check_due(10).await.unwrap();
    assert_eq!(open_findings(&app).await, vec![acme("dns.record")]);
    let now = rt.silo.route53.target_of(&zone, &domain).await.unwrap();
    assert_eq!(now.as_deref(), Some("www.example.org"));
    assert_eq!(app.tenant("acme").await["state"], "active");
    engine.stop().await;
}
