//! `POST /v1/offboard`: the signed offboard webhook from the SaaS frontend (signed like the signup).
//! A repeat of the same `webhook-id` returns the first answer.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;

use crate::lifecycle::offboard::{self, Offboarded};

use super::AppState;
use super::error::ApiError;
use super::signup::{Message, accepted, lifecycle_message};
use super::views::{OffboardWebhook, SignupAccepted, reason};

/// Offboard a tenant: its endpoint goes dark now; after `VEND_OFFBOARD_GRACE` its resources are
/// deleted and its account closed.
#[utoipa::path(
    post,
    path = "/v1/offboard",
    tag = "signup",
    request_body(content = inline(OffboardBodySchema), content_type = "application/json"),
    params(
        ("webhook-id" = String, Header, description = "Unique message id; the idempotency key"),
        ("webhook-timestamp" = i64, Header, description = "Unix seconds; must be within 5 minutes of now"),
        ("webhook-signature" = String, Header, description = "`v1,<base64 HMAC-SHA256>`, space-separated if several"),
    ),
    responses(
        (status = 202, description = "Offboarding (started now or before)", body = SignupAccepted),
        (status = 400, description = "Invalid body", body = super::error::ErrorBody),
        (status = 401, description = "Missing or invalid signature, or stale timestamp", body = super::error::ErrorBody),
        (status = 404, description = "No such tenant", body = super::error::ErrorBody),
        (status = 409, description = "The tenant is closed", body = super::error::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = super::error::ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = super::error::ErrorBody),
    )
)]
pub async fn offboard_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (webhook_id, req) =
        match lifecycle_message::<OffboardWebhook>(&state, &headers, body).await? {
            Message::Repeat(answer) => return Ok(answer),
            Message::New(id, req) => (id, req),
        };
    let why = reason(req.reason.as_deref(), "requested by the offboard webhook")
        .map_err(|m| ApiError::bad_request("invalid_body", m))?;
    let outcome = offboard::offboard(
        &state.pool,
        &state.workflows,
        &req.slug,
        &why,
        "webhook",
        state.offboard_grace,
    )
    .await?;
    let tenant = match outcome {
        Offboarded::Started(t) | Offboarded::Already(t) => t,
        Offboarded::NotFound => {
            return Err(ApiError::not_found(format!("no tenant {:?}", req.slug)));
        }
        Offboarded::Closed => return Err(closed(&req.slug)),
        Offboarded::Unavailable => return Err(unavailable()),
    };
    accepted(&state, &webhook_id, &tenant).await
}

pub(super) fn closed(slug: &str) -> ApiError {
    ApiError::conflict(
        "tenant_closed",
        format!("the tenant {slug:?} is closed; there is nothing left to offboard"),
    )
}

pub(super) fn unavailable() -> ApiError {
    ApiError::conflict(
        "offboarding_unavailable",
        "no offboard workflow is loaded (workflows/offboard.toml)",
    )
}

/// The offboard webhook's body, for the OpenAPI document.
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
pub struct OffboardBodySchema {
    #[schema(example = "acme")]
    slug: String,
    /// Why the tenant leaves; at most 1,000 characters.
    #[schema(example = "contract ended")]
    reason: Option<String>,
}
