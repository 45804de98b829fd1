//! Day-2 account settings against moto: every tenant account gets the configured alternate contacts
//! (billing, operations, security), set from inside the account by the baseline step, and only once;
//! the ops group gets its Identity Center access to the account, which goes again at offboarding.

use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_account::types::AlternateContactType;
use reqwest::Method;
use serde_json::json;
use vend::config::{AlternateContact, ContactKind, IdentityCenter};

use crate::support::moto;
use crate::support::{signup_body, spawn_silo_graced};

const INSTANCE: &str = "arn:aws:sso:::instance/ssoins-1111111111111111";
const PERMISSION_SET: &str =
    "arn:aws:sso:::permissionSet/ssoins-1111111111111111/ps-2222222222222222";
const OPS_GROUP: &str = "g-ops-0001";

/// The groups holding the permission set on `account`.
async fn assigned_groups(sdk: &SdkConfig, account: &str) -> Vec<String> {
    aws_sdk_ssoadmin::Client::new(sdk)
        .list_account_assignments()
        .instance_arn(INSTANCE)
        .account_id(account)
        .permission_set_arn(PERMISSION_SET)
        .send()
        .await
        .unwrap()
        .account_assignments()
        .iter()
        .filter_map(|a| a.principal_id().map(str::to_owned))
        .collect()
}

const WITHIN: Duration = Duration::from_secs(60);

/// vend with the settings `tune` makes, against `moto`, with tenant `acme` signed up and vended: the
/// app, its AWS runtime, the running engine and acme's account.
async fn vend_acme(
    moto: &moto::Moto,
    tune: impl FnOnce(&mut vend::config::AwsSettings),
) -> (
    crate::support::TestApp,
    vend::app::AwsRuntime,
    crate::support::EngineHandle,
    String,
) {
    let (app, rt) = spawn_silo_graced(&moto.url, tune, Duration::ZERO).await;
    app.signup(&signup_body("acme")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    let t = app.wait_for_state("acme", &["active"], WITHIN).await;
    let account = t["account_id"].as_str().unwrap().to_owned();
    (app, rt, engine, account)
}

fn contact(kind: ContactKind, who: &str) -> AlternateContact {
    AlternateContact {
        kind,
        name: format!("{who} desk"),
        title: format!("Head of {who}"),
        email: format!("{}@saas.example", who.to_lowercase()),
        phone: "+1 (555) 010-0100".into(),
    }
}

#[tokio::test]
async fn tenant_accounts_get_their_contacts_and_the_ops_groups_access_until_offboarded() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    let contacts = vec![
        contact(ContactKind::Billing, "Billing"),
        contact(ContactKind::Security, "Security"),
    ];
    let configured = contacts.clone();
    let (app, _rt, engine, account) = vend_acme(&moto, |s| {
        s.alternate_contacts = configured;
        s.identity_center = Some(IdentityCenter {
            instance_arn: INSTANCE.into(),
            permission_set_arn: PERMISSION_SET.into(),
            group_id: OPS_GROUP.into(),
            region: None,
        });
    })
    .await;

    let inside = aws_sdk_account::Client::new(&moto::sdk_in(&sdk, &account).await);
    for (kind, want) in [
        (AlternateContactType::Billing, Some(&contacts[0])),
        (AlternateContactType::Security, Some(&contacts[1])),
        (AlternateContactType::Operations, None),
    ] {
        let got = inside
            .get_alternate_contact()
            .alternate_contact_type(kind.clone())
            .send()
            .await;
        match want {
            Some(c) => {
                let got = got.unwrap();
                let got = got.alternate_contact().unwrap();
                assert_eq!(
                    (
                        got.name(),
                        got.title(),
                        got.email_address(),
                        got.phone_number()
                    ),
                    (
                        Some(c.name.as_str()),
                        Some(c.title.as_str()),
                        Some(c.email.as_str()),
                        Some(c.phone.as_str())
                    ),
                    "{kind:?}"
                );
            }
            None => assert!(got.is_err(), "{kind:?} was not configured: {got:?}"),
        }
    }
    // The management account is not a tenant's: nothing set there.
    let management = aws_sdk_account::Client::new(&sdk)
        .get_alternate_contact()
        .alternate_contact_type(AlternateContactType::Billing)
        .send()
        .await;
    assert!(management.is_err(), "{management:?}");

    // Recorded, so a rerun of the step (or a baseline rollout) with the same contacts calls nothing.
    let recorded = app.tenant("acme").await;
    let digest: Option<String> = sqlx::query_scalar(
        "SELECT resources->>'alternate_contacts' FROM tenants WHERE slug = 'acme'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(digest.as_ref().map(|d| d.len()), Some(16), "{recorded}");

    // The ops group holds the permission set on the tenant's account, once.
    assert_eq!(assigned_groups(&sdk, &account).await, vec![OPS_GROUP]);

    // The step run again (a requeue) repeats nothing: still one assignment, the same contacts.
    let r = app
        .ops(
            Method::POST,
            "/v1/tenants/acme/requeue",
            Some(json!({"from_step": "bootstrap_baseline"})),
        )
        .await;
    assert_eq!(r.status(), 200);
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let t = app.tenant("acme").await;
        let done = t["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "succeeded");
        if t["state"] == "active" && done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "requeue never finished: {t}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(assigned_groups(&sdk, &account).await, vec![OPS_GROUP]);
    let again: Option<String> = sqlx::query_scalar(
        "SELECT resources->>'alternate_contacts' FROM tenants WHERE slug = 'acme'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(again, digest);
    // Offboarded: the access goes before the account is closed.
    let r = app
        .ops(
            Method::POST,
            "/v1/tenants/acme/offboard",
            Some(json!({"reason": "settings test"})),
        )
        .await;
    assert_eq!(r.status(), 202);
    app.wait_for_state("acme", &["closed"], WITHIN).await;
    assert_eq!(assigned_groups(&sdk, &account).await, Vec::<String>::new());
    engine.stop().await;
}

/// A fresh default VPC in `region` (as AWS makes one), with an internet gateway attached.
async fn recreate_default_vpc(sdk: &SdkConfig, region: &str) -> String {
    let ec2 = moto::ec2_in(sdk, region);
    let vpc = ec2.create_default_vpc().send().await.unwrap();
    let vpc = vpc.vpc().unwrap().vpc_id().unwrap().to_owned();
    let igw = ec2.create_internet_gateway().send().await.unwrap();
    let igw = igw
        .internet_gateway()
        .unwrap()
        .internet_gateway_id()
        .unwrap();
    ec2.attach_internet_gateway()
        .internet_gateway_id(igw)
        .vpc_id(&vpc)
        .send()
        .await
        .unwrap();
    vpc
}

async fn resource(app: &crate::support::TestApp, key: &str) -> serde_json::Value {
    sqlx::query_scalar::<_, Option<serde_json::Value>>(
        "SELECT resources->$1 FROM tenants WHERE slug = 'acme'",
    )
    .bind(key)
    .fetch_one(&app.pool)
    .await
    .unwrap()
    .unwrap_or_default()
}

#[tokio::test]
async fn new_accounts_lose_their_unused_default_vpcs_and_have_their_quotas_checked() {
    let moto = moto::start().await;
    let sdk = moto::sdk(&moto.url).await;
    moto::prepare_management(&sdk).await;
    // Met by AWS's default (egress-only internet gateways per region: 5), so nothing is requested.
    let quota = vend::config::QuotaRequest {
        service: "vpc".into(),
        quota: "L-45FE3B85".into(),
        value: 5.0,
    };
    let configured = quota.clone();
    let (app, _rt, engine, account) =
        vend_acme(&moto, |s| s.service_quotas = vec![configured]).await;
    let inside = moto::sdk_in(&sdk, &account).await;

    // Every enabled region's default VPC is gone, and recorded as removed.
    let enabled = moto::enabled_regions(&inside).await;
    assert!(enabled.len() > 3, "{enabled:?}");
    for region in [moto::REGION, moto::OTHER_REGION, "ap-southeast-2"] {
        assert_eq!(
            moto::default_vpcs(&inside, region).await,
            Vec::<String>::new(),
            "{region}"
        );
    }
    let record = resource(&app, "default_vpcs").await;
    assert_eq!(
        record["removed"].as_array().map(Vec::len),
        Some(enabled.len()),
        "{record}"
    );
    assert_eq!(record["kept"], json!({}));
    // The management account's own default VPC is not a tenant's: untouched.
    assert_eq!(moto::default_vpcs(&sdk, moto::REGION).await.len(), 1);

    let quotas = resource(&app, "service_quotas").await;
    assert_eq!(quotas["quotas"][0]["outcome"], "met", "{quotas}");
    assert_eq!(quotas["quotas"][0]["current"], 5.0, "{quotas}");
    assert_eq!(quotas["region"], moto::REGION, "{quotas}");

    // An account from before vend removed default VPCs (no record): its unused default VPC goes with
    // its internet gateway, one with a network interface stays and is reported, and a VPC that is
    // not a default one is never looked at.
    let pristine = recreate_default_vpc(&inside, moto::OTHER_REGION).await;
    let busy = recreate_default_vpc(&inside, "us-west-2").await;
    let subnet = moto::ec2_in(&inside, "us-west-2")
        .describe_subnets()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("vpc-id")
                .values(&busy)
                .build(),
        )
        .send()
        .await
        .unwrap()
        .subnets()[0]
        .subnet_id()
        .unwrap()
        .to_owned();
    moto::ec2_in(&inside, "us-west-2")
        .create_network_interface()
        .subnet_id(subnet)
        .send()
        .await
        .unwrap();
    let own = moto::ec2_in(&inside, moto::REGION)
        .create_vpc()
        .cidr_block("10.20.0.0/16")
        .send()
        .await
        .unwrap();
    let own = own.vpc().unwrap().vpc_id().unwrap().to_owned();
    sqlx::query("UPDATE tenants SET resources = resources - 'default_vpcs' WHERE slug = 'acme'")
        .execute(&app.pool)
        .await
        .unwrap();
    let t = app
        .requeue_and_settle("acme", "bootstrap_baseline", WITHIN)
        .await;
    assert_eq!(t["state"], "active", "{t}");
    assert_eq!(
        moto::default_vpcs(&inside, moto::OTHER_REGION).await,
        Vec::<String>::new()
    );
    let gateways = moto::ec2_in(&inside, moto::OTHER_REGION)
        .describe_internet_gateways()
        .send()
        .await
        .unwrap();
    assert_eq!(gateways.internet_gateways().len(), 0, "{gateways:?}");
    assert_eq!(
        moto::default_vpcs(&inside, "us-west-2").await,
        vec![busy.clone()]
    );
    let owned = moto::ec2_in(&inside, moto::REGION)
        .describe_vpcs()
        .vpc_ids(&own)
        .send()
        .await
        .unwrap();
    assert_eq!(owned.vpcs().len(), 1);
    let record = resource(&app, "default_vpcs").await;
    assert_eq!(
        record["removed"],
        json!([format!("{}:{pristine}", moto::OTHER_REGION)]),
        "{record}"
    );
    let why = record["kept"][format!("us-west-2:{busy}")]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("network interface"), "{record}");

    // Run again: recorded, so nothing is swept and the record stands.
    let t = app
        .requeue_and_settle("acme", "bootstrap_baseline", WITHIN)
        .await;
    assert_eq!(t["state"], "active", "{t}");
    assert_eq!(resource(&app, "default_vpcs").await, record);
    assert_eq!(moto::default_vpcs(&inside, "us-west-2").await, vec![busy]);
    assert_eq!(resource(&app, "service_quotas").await, quotas);
    engine.stop().await;
}
