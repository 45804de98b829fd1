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
    let (app, _rt) = spawn_silo_graced(
        &moto.url,
        |s| {
            s.alternate_contacts = configured;
            s.identity_center = Some(IdentityCenter {
                instance_arn: INSTANCE.into(),
                permission_set_arn: PERMISSION_SET.into(),
                group_id: OPS_GROUP.into(),
                region: None,
            });
        },
        Duration::ZERO,
    )
    .await;
    app.signup(&signup_body("acme")).await;
    let engine = app.start_engine(app.engine_config("w1"));
    let t = app.wait_for_state("acme", &["active"], WITHIN).await;
    let account = t["account_id"].as_str().unwrap().to_owned();

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
