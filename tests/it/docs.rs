//! The IAM policy documents in docs/iam/ list exactly the AWS actions vend's code calls.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::support::postgres::repo_root;

/// `service.Operation` names passed to `Aws::call` in src/aws/.
fn operations_in_code() -> BTreeSet<String> {
    let mut ops = BTreeSet::new();
    for f in std::fs::read_dir(repo_root().join("src/aws")).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        for part in text.split('"').skip(1).step_by(2) {
            if let Some((svc, op)) = part.split_once('.')
                && [
                    "organizations",
                    "sts",
                    "cloudformation",
                    "apigateway",
                    "route53",
                    "eventbridge",
                    "acm",
                    "account",
                    "sso-admin",
                    "ec2",
                    "service-quotas",
                    "dynamodb",
                ]
                .contains(&svc)
                && !op.is_empty()
                && op.chars().all(|c| c.is_ascii_alphanumeric())
                && op.starts_with(|c: char| c.is_ascii_uppercase())
            {
                ops.insert(format!("{svc}.{op}"));
            }
        }
    }
    ops
}

fn actions(file: &str) -> BTreeSet<String> {
    let doc: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("docs/iam").join(file)).unwrap(),
    )
    .unwrap();
    let mut out = BTreeSet::new();
    for st in doc["Statement"].as_array().unwrap() {
        match &st["Action"] {
            Value::String(a) => {
                out.insert(a.clone());
            }
            Value::Array(a) => out.extend(a.iter().map(|x| x.as_str().unwrap().to_owned())),
            _ => panic!("statement without actions in {file}"),
        }
    }
    out
}

#[test]
fn the_management_policy_lists_exactly_the_management_calls() {
    let expected: BTreeSet<String> = operations_in_code()
        .into_iter()
        .filter_map(|op| {
            let (svc, name) = op.split_once('.').unwrap();
            let prefix = match svc {
                "organizations" => "organizations",
                "sts" => "sts",
                "route53" => "route53",
                "eventbridge" => "events",
                "sso-admin" => "sso",
                _ => return None, // called inside tenant accounts, through the assumed role
            };
            Some(format!("{prefix}:{name}"))
        })
        .collect();
    let mut listed = actions("vend-management-policy.json");
    // CreateAccount needs it the first time the organization creates an account.
    assert!(listed.remove("iam:CreateServiceLinkedRole"));
    assert_eq!(listed, expected);
}

#[test]
fn the_tenant_account_policy_covers_the_calls_made_there() {
    let listed = actions("vend-tenant-account-policy.json");
    for op in operations_in_code() {
        let (svc, name) = op.split_once('.').unwrap();
        match svc {
            "cloudformation" | "acm" | "account" | "ec2" | "dynamodb" => {
                assert!(listed.contains(&format!("{svc}:{name}")), "{op} missing")
            }
            "service-quotas" => assert!(
                listed.contains(&format!("servicequotas:{name}")),
                "{op} missing"
            ),
            // API Gateway's control plane is authorized by HTTP verb.
            "apigateway" => {
                let verb = if name.starts_with("Get") {
                    "GET"
                } else if name.starts_with("Create") {
                    "POST"
                } else if name.starts_with("Delete") {
                    "DELETE"
                } else {
                    "PATCH"
                };
                assert!(
                    listed.contains(&format!("apigateway:{verb}")),
                    "{op} needs apigateway:{verb}"
                );
            }
            _ => {}
        }
    }
    // A certificate requested with tags is tagged under a permission of its own.
    assert!(listed.contains("acm:AddTagsToCertificate"));
}
