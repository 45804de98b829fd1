//! `POST /v1/signup`: the signed signup webhook. It checks the request and hands the signup to
//! `lifecycle::signup`, which stores it in one statement; it never calls AWS.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::info;

use crate::db::tenants::StoredAnswer;
use crate::domain::{Signup, SlugRefusal};
use crate::lifecycle;
use crate::lifecycle::signup::Outcome;

use super::AppState;
use super::error::ApiError;
use super::views::{SignupAccepted, TenantView};

/// Larger bodies are refused with 413 before anything else is looked at.
pub const MAX_BODY: usize = 64 * 1024;

/// Accept a signup. Signed per Standard Webhooks; a repeat of the same `webhook-id` returns the
/// original answer and changes nothing.
#[utoipa::path(
    post,
    path = "/v1/signup",
    tag = "signup",
    request_body(content = inline(SignupBodySchema), content_type = "application/json"),
    params(
        ("webhook-id" = String, Header, description = "Unique message id; the idempotency key"),
        ("webhook-timestamp" = i64, Header, description = "Unix seconds; must be within 5 minutes of now"),
        ("webhook-signature" = String, Header, description = "`v1,<base64 HMAC-SHA256>`, space-separated if several"),
    ),
    responses(
        (status = 202, description = "Accepted; provisioning is asynchronous", body = SignupAccepted),
        (status = 400, description = "Invalid body or fields; `reserved_slug` for a reserved slug", body = super::error::ErrorBody),
        (status = 401, description = "Missing or invalid signature, or stale timestamp", body = super::error::ErrorBody),
        (status = 409, description = "The slug belongs to a tenant created by another request", body = super::error::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = super::error::ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = super::error::ErrorBody),
    )
)]
pub async fn signup(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (webhook_id, bytes) = verified(&state, &headers, body).await?;
    let signup =
        Signup::parse(&bytes).map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
    state.slug_rules.check(&signup.slug).map_err(|r| match r {
        SlugRefusal::Reserved => ApiError::bad_request(
            "reserved_slug",
            format!("slug: {:?} is reserved", signup.slug.as_str()),
        ),
        SlugRefusal::Invalid(e) => ApiError::bad_request("invalid_body", e.to_string()),
    })?;
    let region = state
        .regions
        .pick(signup.region.as_deref())
        .map_err(|e| ApiError::bad_request("invalid_region", e.to_string()))?;

    accept(&state, &signup, region, &webhook_id).await
}

async fn accept(
    state: &AppState,
    signup: &Signup,
    region: Option<String>,
    webhook_id: &str,
) -> Result<Response, ApiError> {
    let workflow = state.workflows.for_tier(signup.tier);
    let tenant = lifecycle::signup::new_tenant(signup, workflow, region, webhook_id);
    let view = TenantView::from(&tenant);
    let answer = StoredAnswer {
        status: StatusCode::ACCEPTED.as_u16(),
        response: serde_json::to_value(SignupAccepted {
            status_url: format!("/v1/tenants/{}", tenant.slug),
            tenant: view,
        })
        .expect("views serialize"),
    };
    match state.intake.accept(tenant, workflow, answer).await? {
        Outcome::Accepted(answer) => {
            // After the commit, not in it (see `db::Nudge`).
            state.nudges.signup.nudge();
            info!(tenant.slug = %signup.slug.as_str(), tier = signup.tier.as_str(), "signup accepted");
            Ok(answer_response(answer))
        }
        Outcome::Replayed(answer) => Ok(answer_response(answer)),
        Outcome::SlugTaken => Err(ApiError::conflict(
            "slug_taken",
            format!(
                "the slug {:?} belongs to another tenant",
                signup.slug.as_str()
            ),
        )),
        Outcome::WebhookIdReused => Err(ApiError::conflict(
            "webhook_id_reused",
            "this webhook-id was already used",
        )),
    }
}

/// A signed inbound webhook's checks, shared by every such route: content type, size, Standard
/// Webhooks signature and timestamp, webhook-id. Returns the webhook-id and the body.
pub(super) async fn verified(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<(String, axum::body::Bytes), ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json",
        ));
    }
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the body must be at most 64 KiB",
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(too_large());
    }
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| too_large())?;

    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    state
        .signup_secret
        .verify(
            h("webhook-id"),
            h("webhook-timestamp"),
            h("webhook-signature"),
            &bytes,
            chrono::Utc::now().timestamp(),
        )
        .map_err(|e| ApiError::unauthorized(e.to_string()))?;
    let webhook_id = h("webhook-id").unwrap_or_default().to_owned();
    if webhook_id.len() > 256 {
        return Err(ApiError::bad_request(
            "invalid_webhook_id",
            "webhook-id must be at most 256 characters",
        ));
    }

    Ok((webhook_id, bytes))
}

/// A verified lifecycle webhook (offboard, tier): a repeat of a `webhook-id` already answered, or
/// a new message with its id and parsed body.
pub(super) enum Message<T> {
    Repeat(Response),
    New(String, T),
}

/// `verified`, then the stored answer for a repeated `webhook-id` (before the body is parsed, so
/// a repeat gets the first answer even if the body no longer parses), else the parsed body.
pub(super) async fn lifecycle_message<T: serde::de::DeserializeOwned>(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<Message<T>, ApiError> {
    let (webhook_id, bytes) = verified(state, headers, body).await?;
    if let Some(answer) = crate::db::tenants::find_signup_answer(&state.pool, &webhook_id).await? {
        return Ok(Message::Repeat(answer_response(answer)));
    }
    let req = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::bad_request("invalid_body", format!("invalid body: {e}")))?;
    Ok(Message::New(webhook_id, req))
}

/// A lifecycle webhook's answer (offboard, tier): `202` with the tenant, stored under its
/// `webhook-id` so a repeat of the message gets this answer. The action itself is idempotent too.
pub(super) async fn accepted(
    state: &AppState,
    webhook_id: &str,
    tenant: &crate::db::tenants::Tenant,
) -> Result<Response, ApiError> {
    let answer = StoredAnswer {
        status: StatusCode::ACCEPTED.as_u16(),
        response: serde_json::to_value(super::views::SignupAccepted {
            status_url: format!("/v1/tenants/{}", tenant.slug),
            tenant: super::views::TenantView::from(tenant),
        })
        .expect("views serialize"),
    };
    crate::db::tenants::store_answer(&state.pool, webhook_id, tenant.id, &answer).await?;
    Ok(answer_response(answer))
}

fn answer_response(answer: StoredAnswer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::ACCEPTED);
    (status, axum::Json(answer.response)).into_response()
}

/// The signup body, for the OpenAPI document.
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
pub struct SignupBodySchema {
    /// 3–40 chars: lowercase letters, digits and `-`; starts with a letter, does not end with `-`.
    #[schema(example = "acme")]
    slug: String,
    /// 1–200 characters.
    #[schema(example = "Acme Corp")]
    name: String,
    #[schema(example = "ops@acme.example")]
    owner_email: String,
    /// `free`, `pro` or `enterprise`.
    #[schema(example = "enterprise")]
    tier: String,
    /// Where the tenant's stack, custom domain and certificate live: one of `VEND_ALLOWED_REGIONS`
    /// (default: vend's own region).
    #[schema(example = "eu-central-1")]
    region: Option<String>,
}
