//! Organizations as AWS runs it and an emulator does not: an asynchronous `CreateAccount` that stays
//! `IN_PROGRESS` for a while, at most a few at once, refusing a root e-mail already taken, and a
//! `CloseAccount` quota.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::wire::{Protocol, aws_error, json_response};
use crate::{Inner, Proxy, forward_raw, rebuild};

#[derive(Debug, Clone)]
pub(crate) struct Creation {
    pub(crate) started: Instant,
    /// `Some` for requests the proxy failed itself (a duplicate e-mail).
    pub(crate) failed: Option<String>,
    pub(crate) account_name: String,
    pub(crate) account_id: Option<String>,
}

pub(crate) fn in_flight(
    creations: &HashMap<String, Creation>,
    now: Instant,
    delay: Duration,
) -> usize {
    creations
        .values()
        .filter(|c| c.failed.is_none() && now.duration_since(c.started) < delay)
        .count()
}

/// Organizations, with the asynchronous, capped, e-mail-unique `CreateAccount` of real AWS: some calls
/// are answered before reaching the emulator, the rest are forwarded and their answers rewritten.
pub(crate) async fn call(
    p: &Proxy,
    op: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let delay = p.config.create_account_delay;
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Some(answer) = answer_locally(p, op, &req) {
        return answer;
    }
    let (status, h, b) = match forward_raw(p, method, uri, headers, body).await {
        Ok(x) => x,
        Err(e) => return (StatusCode::BAD_GATEWAY, format!("upstream: {e}")).into_response(),
    };
    let Ok(mut v) = serde_json::from_slice::<Value>(&b) else {
        return rebuild(status, &h, b);
    };
    let mut inner = p.inner.lock().expect("proxy lock");
    let now = Instant::now();
    let in_progress_id = |inner: &Inner, id: Option<&str>| {
        id.and_then(|id| inner.creations.get(id))
            .is_some_and(|c| now.duration_since(c.started) < delay)
    };
    match op {
        "CreateAccount" => {
            let Some(id) = v["CreateAccountStatus"]["Id"].as_str().map(str::to_owned) else {
                return rebuild(status, &h, b);
            };
            inner.creations.insert(
                id,
                Creation {
                    started: now,
                    failed: None,
                    account_name: req["AccountName"].as_str().unwrap_or("").to_owned(),
                    account_id: v["CreateAccountStatus"]["AccountId"]
                        .as_str()
                        .map(str::to_owned),
                },
            );
            let email = req["Email"].as_str().unwrap_or("").to_ascii_lowercase();
            inner.emails.insert(email, String::new());
            inner.stats.create_account_started += 1;
            let flying = in_flight(&inner.creations, now, delay);
            inner.stats.create_account_max_in_flight =
                inner.stats.create_account_max_in_flight.max(flying);
            if !delay.is_zero() {
                in_progress(&mut v["CreateAccountStatus"]);
            }
        }
        "DescribeCreateAccountStatus" => {
            if in_progress_id(&inner, req["CreateAccountRequestId"].as_str()) {
                in_progress(&mut v["CreateAccountStatus"]);
            } else if !delay.is_zero() {
                // As AWS reports it: completed when the delay was over, not when the emulator acted.
                let s = &mut v["CreateAccountStatus"];
                if let Some(requested) = s["RequestedTimestamp"].as_f64() {
                    s["CompletedTimestamp"] = json!(requested + delay.as_secs_f64());
                }
            }
        }
        "ListCreateAccountStatus" => {
            for s in v["CreateAccountStatuses"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                if in_progress_id(&inner, s["Id"].as_str()) {
                    in_progress(s);
                }
            }
        }
        "ListAccounts" => {
            // An account appears in the organization only once its creation succeeded.
            let hidden: Vec<String> = inner
                .creations
                .values()
                .filter(|c| now.duration_since(c.started) < delay)
                .filter_map(|c| c.account_id.clone())
                .collect();
            if let Some(list) = v["Accounts"].as_array_mut() {
                list.retain(|a| {
                    !a["Id"]
                        .as_str()
                        .is_some_and(|id| hidden.iter().any(|h| h == id))
                });
            }
        }
        _ => return rebuild(status, &h, b),
    }
    json_response(status, &v)
}

/// What AWS answers without the emulator: a sixth CreateAccount in progress, a root e-mail already
/// taken (accepted, then failed asynchronously), and the status of such a failed request.
fn answer_locally(p: &Proxy, op: &str, req: &Value) -> Option<Response> {
    let mut inner = p.inner.lock().expect("proxy lock");
    let now = Instant::now();
    match op {
        "CreateAccount" => {
            if in_flight(&inner.creations, now, p.config.create_account_delay)
                >= p.config.create_account_cap
            {
                inner.stats.create_account_over_cap += 1;
                return Some(aws_error(
                    Protocol::Json,
                    "organizations",
                    400,
                    "TooManyRequestsException",
                    "AWS Organizations can't complete your request because another request is already in progress.",
                    None,
                ));
            }
            let email = req["Email"].as_str().unwrap_or("").to_ascii_lowercase();
            if !inner.emails.contains_key(&email) {
                return None;
            }
            inner.stats.duplicate_emails_refused += 1;
            let name = req["AccountName"].as_str().unwrap_or("").to_owned();
            let id = format!("car-{}", uuid::Uuid::new_v4().simple());
            inner.creations.insert(
                id.clone(),
                Creation {
                    started: now,
                    failed: Some("EMAIL_ALREADY_EXISTS".into()),
                    account_name: name.clone(),
                    account_id: None,
                },
            );
            Some(json_response(
                StatusCode::OK,
                &json!({"CreateAccountStatus": {
                "Id": id, "AccountName": name, "State": "IN_PROGRESS", "RequestedTimestamp": epoch_now()}}),
            ))
        }
        "CloseAccount" => {
            let quota = p.config.close_account_quota?;
            let window = p.config.close_account_window;
            inner.closures.retain(|t| now.duration_since(*t) < window);
            if inner.closures.len() < quota {
                inner.closures.push(now);
                return None;
            }
            inner.stats.close_account_refused += 1;
            Some(
                (
                    StatusCode::BAD_REQUEST,
                    [("content-type", "application/x-amz-json-1.1")],
                    json!({"__type": "ConstraintViolationException",
                           "Message": "You have exceeded close account quota for the past 30 days.",
                           "Reason": "CLOSE_ACCOUNT_QUOTA_EXCEEDED"})
                    .to_string(),
                )
                    .into_response(),
            )
        }
        "DescribeCreateAccountStatus" => {
            let id = req["CreateAccountRequestId"].as_str().unwrap_or("");
            let c = inner.creations.get(id)?;
            let reason = c.failed.as_ref()?;
            Some(json_response(
                StatusCode::OK,
                &json!({"CreateAccountStatus": {
                "Id": id, "AccountName": c.account_name, "State": "FAILED", "FailureReason": reason,
                "RequestedTimestamp": epoch_now(), "CompletedTimestamp": epoch_now()}}),
            ))
        }
        _ => None,
    }
}

fn in_progress(status: &mut Value) {
    if let Some(o) = status.as_object_mut() {
        o.insert("State".into(), json!("IN_PROGRESS"));
        o.remove("AccountId");
        o.remove("CompletedTimestamp");
    }
}

fn epoch_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}
