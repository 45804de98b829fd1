//! The steps LocalStack's community edition supports, against LocalStack: `bootstrap_baseline`,
//! `map_domain`, assumed-role handling and EventBridge publishing. It has no Organizations, so that side
//! is on moto; its DynamoDB cannot be downloaded here, so the tenant's API is made directly.

use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use reqwest::Method;
use serde_json::{Value, json};
use vend::aws::organizations::SdkOrganizations;
use vend::telemetry::AwsLabels;

use crate::support::moto::{self, BASE_DOMAIN};
use crate::support::{TestApp, localstack, signup_body, spawn_silo_with, workflow_toml};

const TENANT_ACCOUNT: &str = "111111111111";
const WITHIN: Duration = Duration::from_secs(60);

/// Organizations on moto (LocalStack's community edition has none), everything else on LocalStack with
/// the base domain's zone: the SDK configuration for LocalStack and the Organizations adapter for moto.
async fn split_world() -> (
    moto::Moto,
    localstack::LocalStack,
    SdkConfig,
    Arc<dyn vend::aws::organizations::Organizations>,
) {
    let m = moto::start().await;
    let moto_sdk = moto::sdk(&m.url).await;
    aws_sdk_organizations::Client::new(&moto_sdk)
        .create_organization()
        .feature_set(aws_sdk_organizations::types::OrganizationFeatureSet::All)
        .send()
        .await
        .unwrap();
    let ls = localstack::start().await;
    let sdk = moto::sdk(&ls.url).await;
    aws_sdk_route53::Client::new(&sdk)
        .create_hosted_zone()
        .name(BASE_DOMAIN)
        .caller_reference("vend-test")
        .send()
        .await
        .unwrap();
    let orgs = Arc::new(SdkOrganizations::new(vend::aws::Aws::new(
        moto_sdk,
        vend::telemetry::Metrics::new(),
    )));
    (m, ls, sdk, orgs)
}

/// Signs `acme` up as if the steps before the ones under test had run: its account is the tenant account
/// (LocalStack's default) and its API exists there. Returns the SDK configuration inside that account and
/// the API's id.
async fn signup_on_the_tenant_account(app: &TestApp, sdk: &SdkConfig) -> (SdkConfig, String) {
    let inside = moto::sdk_in(sdk, TENANT_ACCOUNT).await;
    let api = make_api(&inside).await;
    app.signup(&signup_body("acme")).await;
    sqlx::query("UPDATE tenants SET resources = $1")
        .bind(json!({"account_id": TENANT_ACCOUNT, "api_id": api, "api_stage": "prod"}))
        .execute(&app.pool)
        .await
        .unwrap();
    (inside, api)
}

/// A REST API with a `prod` stage in the tenant account, standing in for the tenant stack's.
async fn make_api(inside: &SdkConfig) -> String {
    let apigw = aws_sdk_apigateway::Client::new(inside);
    let api = apigw
        .create_rest_api()
        .name("tenant-acme")
        .send()
        .await
        .unwrap();
    let id = api.id().unwrap().to_owned();
    let root = apigw
        .get_resources()
        .rest_api_id(&id)
        .send()
        .await
        .unwrap()
        .items()[0]
        .id()
        .unwrap()
        .to_owned();
    apigw
        .put_method()
        .rest_api_id(&id)
        .resource_id(&root)
        .http_method("GET")
        .authorization_type("NONE")
        .send()
        .await
        .unwrap();
    apigw
        .put_integration()
        .rest_api_id(&id)
        .resource_id(&root)
        .http_method("GET")
        .r#type(aws_sdk_apigateway::types::IntegrationType::Mock)
        .send()
        .await
        .unwrap();
    apigw
        .create_deployment()
        .rest_api_id(&id)
        .stage_name("prod")
        .send()
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn baseline_domain_and_assumed_roles_work_against_localstack() {
    let (_moto, _ls, sdk, orgs) = split_world().await;
    let toml = workflow_toml(
        &[
            ("bootstrap_baseline", "bootstrap_baseline"),
            ("map_domain", "map_domain"),
        ],
        "",
    );
    // LocalStack's community edition has no CloudTrail.
    let (app, rt) = spawn_silo_with(
        sdk.clone(),
        Some(orgs),
        |s| s.baseline_cloudtrail = false,
        &toml,
    )
    .await;

    let (inside, api) = signup_on_the_tenant_account(&app, &sdk).await;

    let engine = app.start_engine(app.engine_config("w1"));
    let t = app
        .wait_for_state("acme", &["active", "failed"], WITHIN)
        .await;
    assert_eq!(t["state"], "active", "{t:#}");

    // The baseline, in the tenant account.
    let iam = aws_sdk_iam::Client::new(&inside);
    for role in ["vend-deployment", "vend-event-forwarder"] {
        iam.get_role()
            .role_name(role)
            .send()
            .await
            .unwrap_or_else(|e| panic!("no role {role}: {e}"));
    }
    let cfn = aws_sdk_cloudformation::Client::new(&inside);
    let s = cfn
        .describe_stacks()
        .stack_name("vend-baseline")
        .send()
        .await
        .unwrap();
    assert_eq!(
        s.stacks()[0].stack_status().unwrap().as_str(),
        "CREATE_COMPLETE"
    );
    let rules = aws_sdk_eventbridge::Client::new(&inside)
        .list_rules()
        .send()
        .await
        .unwrap();
    assert!(
        rules
            .rules()
            .iter()
            .any(|r| r.name() == Some("vend-forward-to-central"))
    );
    assert_eq!(
        t["resources"]["deployment_role_arn"],
        format!("arn:aws:iam::{TENANT_ACCOUNT}:role/vend-deployment")
    );

    // The domain, its mapping, and the record in the central zone.
    let domain = format!("acme.{BASE_DOMAIN}");
    let apigw = aws_sdk_apigateway::Client::new(&inside);
    let d = apigw
        .get_domain_name()
        .domain_name(&domain)
        .send()
        .await
        .unwrap();
    let target = d.regional_domain_name().unwrap().to_owned();
    let m = apigw
        .get_base_path_mappings()
        .domain_name(&domain)
        .send()
        .await
        .unwrap();
    assert_eq!(m.items().len(), 1);
    assert_eq!(m.items()[0].rest_api_id(), Some(api.as_str()));
    let records = || async {
        crate::support::moto::records_named(&sdk, &domain)
            .await
            .iter()
            .map(|r| {
                r.alias_target()
                    .map(|a| a.dns_name().to_owned())
                    .or_else(|| r.resource_records().first().map(|v| v.value().to_owned()))
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };
    let before = records().await;
    assert_eq!(before.len(), 1);
    assert_eq!(before[0].trim_end_matches('.'), target);
    assert_eq!(t["endpoint"], format!("https://{domain}"));

    // Assumed credentials are cached per account: one AssumeRole served both steps.
    let assume = rt
        .silo
        .aws
        .metrics()
        .aws_calls
        .get_or_create(&AwsLabels {
            operation: "sts.AssumeRole".into(),
        })
        .get();
    assert_eq!(assume, 1);

    // Running both steps again changes nothing.
    let t = app
        .requeue_and_settle("acme", "bootstrap_baseline", WITHIN)
        .await;
    engine.stop().await;
    assert_eq!(t["state"], "active", "{t:#}");
    assert_eq!(
        apigw.get_domain_names().send().await.unwrap().items().len(),
        1
    );
    assert_eq!(
        apigw
            .get_base_path_mappings()
            .domain_name(&domain)
            .send()
            .await
            .unwrap()
            .items()
            .len(),
        1
    );
    assert_eq!(records().await, before);
    let stacks = cfn.list_stacks().send().await.unwrap();
    assert_eq!(
        stacks
            .stack_summaries()
            .iter()
            .filter(|s| s
                .stack_status()
                .is_some_and(|x| x.as_str() != "DELETE_COMPLETE"))
            .count(),
        1
    );
}

#[tokio::test]
async fn a_per_account_certificate_is_requested_validated_and_used_on_localstack() {
    let (_moto, _ls, sdk, orgs) = split_world().await;
    let toml = workflow_toml(&[("map_domain", "map_domain")], "");
    let (app, rt) = spawn_silo_with(
        sdk.clone(),
        Some(orgs),
        |s| s.certificates = vend::config::Certificates::PerAccount,
        &toml,
    )
    .await;
    let (inside, _) = signup_on_the_tenant_account(&app, &sdk).await;
    let engine = app.start_engine(app.engine_config("w1"));
    let t = app
        .wait_for_state("acme", &["active", "failed"], WITHIN)
        .await;
    assert_eq!(t["state"], "active", "{t:#}");

    let acm = aws_sdk_acm::Client::new(&inside);
    moto::the_one_certificate(&inside, &format!("acme.{BASE_DOMAIN}"), &t).await;

    // Again: the recorded certificate is used, nothing new is requested.
    let t = app.requeue_and_settle("acme", "map_domain", WITHIN).await;
    engine.stop().await;
    assert_eq!(t["state"], "active", "{t:#}");
    let calls = |op: &str| {
        rt.silo
            .aws
            .metrics()
            .aws_calls
            .get_or_create(&AwsLabels {
                operation: op.into(),
            })
            .get()
    };
    assert_eq!(calls("acm.RequestCertificate"), 1);
    assert_eq!(
        acm.list_certificates()
            .send()
            .await
            .unwrap()
            .certificate_summary_list()
            .len(),
        1
    );
}

#[tokio::test]
async fn progress_events_reach_the_central_bus_on_localstack() {
    let (_moto, _ls, sdk, orgs) = split_world().await;
    let toml = workflow_toml(&[("bootstrap_baseline", "bootstrap_baseline")], "");
    let (app, rt) = spawn_silo_with(
        sdk.clone(),
        Some(orgs),
        |s| s.baseline_cloudtrail = false,
        &toml,
    )
    .await;

    // A queue subscribed to everything vend puts on its bus.
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
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
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
                .arn(arn)
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
    // Twelve signups: 12 tenant.created events, more than one PutEvents batch of 10.
    for i in 0..12 {
        app.signup(&signup_body(&format!("tenant-{i}"))).await;
    }
    let mut sent = 0;
    while sent < 12 {
        sent += dispatcher.dispatch_once().await.unwrap();
    }
    let mut got: Vec<Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < 12 && tokio::time::Instant::now() < deadline {
        let r = sqs
            .receive_message()
            .queue_url(&queue)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        for m in r.messages() {
            got.push(serde_json::from_str(m.body().unwrap()).unwrap());
            sqs.delete_message()
                .queue_url(&queue)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    assert_eq!(got.len(), 12);
    assert!(
        got.iter()
            .all(|e| e["source"] == "vend" && e["detail-type"] == "tenant.created")
    );
    let mut slugs: Vec<String> = got
        .iter()
        .map(|e| e["detail"]["tenant"]["slug"].as_str().unwrap().to_owned())
        .collect();
    slugs.sort();
    slugs.dedup();
    assert_eq!(slugs.len(), 12);
    let d: Value = app
        .ops(Method::GET, "/v1/deliveries?state=delivered", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(d["deliveries"].as_array().unwrap().len(), 12);
}

#[tokio::test]
async fn a_failed_stack_is_a_clear_step_failure_and_a_retry_starts_it_afresh() {
    let (_moto, _ls, sdk, orgs) = split_world().await;
    // A baseline whose extra role attaches a policy that does not exist: CloudFormation rolls back.
    let templates = tempfile::tempdir().unwrap();
    let root = crate::support::postgres::repo_root().join("templates");
    let broken = std::fs::read_to_string(root.join("baseline.yaml")).unwrap().replace(
        "\nOutputs:",
        "\n  Broken:\n    Type: AWS::IAM::Role\n    Properties:\n      RoleName: vend-broken\n      AssumeRolePolicyDocument: {Version: \"2012-10-17\", Statement: [{Effect: Allow, Principal: {Service: lambda.amazonaws.com}, Action: \"sts:AssumeRole\"}]}\n      ManagedPolicyArns: [arn:aws:iam::aws:policy/DoesNotExist]\n\nOutputs:",
    );
    std::fs::write(templates.path().join("baseline.yaml"), broken).unwrap();
    for f in ["tenant-stack.yaml", "pool-stack.yaml"] {
        std::fs::copy(root.join(f), templates.path().join(f)).unwrap();
    }
    let dir = templates.path().to_owned();
    let toml = workflow_toml(&[("bootstrap_baseline", "bootstrap_baseline")], "");
    let (app, _rt) = spawn_silo_with(
        sdk.clone(),
        Some(orgs),
        |s| {
            s.baseline_cloudtrail = false;
            s.templates_dir = dir;
        },
        &toml,
    )
    .await;
    app.signup(&signup_body("acme")).await;
    sqlx::query("UPDATE tenants SET resources = $1")
        .bind(json!({"account_id": TENANT_ACCOUNT}))
        .execute(&app.pool)
        .await
        .unwrap();
    let engine = app.start_engine(app.engine_config("w1"));
    let t = app
        .wait_for_state("acme", &["active", "failed"], WITHIN)
        .await;
    assert_eq!(t["state"], "failed");
    let step = &t["steps"][0];
    assert_eq!(step["last_error_code"], "StackFailed");
    let msg = step["last_error"].as_str().unwrap();
    assert!(
        msg.contains("vend-baseline") && msg.contains("Broken") && msg.contains("DoesNotExist"),
        "{msg}"
    );
    let first_id = t["resources"]["baseline_stack_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // The operator retries (after fixing the cause, or not): the failed stack is deleted and created
    // afresh rather than reported again.
    assert_eq!(
        app.ops(Method::POST, "/v1/tenants/acme/retry", None)
            .await
            .status(),
        200
    );
    let t = app
        .wait_for_state("acme", &["active", "failed"], WITHIN)
        .await;
    engine.stop().await;
    assert_eq!(t["state"], "failed", "the template is still broken");
    let second_id = t["resources"]["baseline_stack_id"].as_str().unwrap();
    assert_ne!(second_id, first_id, "the failed stack was not recreated");
}
