//! Tier changes: `POST /v1/tenants/{slug}/tier` (ops) and the signed webhook `POST /v1/tier` from the
//! SaaS frontend (signed like the signup; a repeat of the same `webhook-id` gets the first answer).

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use utoipa::ToSchema;

use crate::db;
use crate::domain::Tier;
use crate::lifecycle::tier::{self, Changed};

use super::error::{ApiError, ErrorBody};
use super::ops::{ApiJson, detail, no_tenant};
use super::signup::{Message, accepted, lifecycle_message};
use super::views::{SignupAccepted, TenantDetail};
use super::{AppState, Operator};

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TierRequest {
    /// `free`, `pro` or `enterprise`.
    #[schema(example = "enterprise")]
    pub tier: String,
}

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TierWebhook {
    #[schema(example = "acme")]
    pub slug: String,
    #[schema(example = "enterprise")]
    pub tier: String,
}

fn parse_tier(t: &str) -> Result<Tier, ApiError> {
    Tier::parse(t)
        .map_err(|e| ApiError::bad_request("invalid_tier", format!("tier: {}", e.message)))
}

/// What a change request's outcome means for the caller: `Ok(true)` started now, `Ok(false)` nothing
/// to do (the tier already, or a change to it under way).
fn outcome(slug: &str, c: Changed) -> Result<bool, ApiError> {
    match c {
        Changed::Started(_) => Ok(true),
        Changed::Already(_) => Ok(false),
        Changed::NotFound => Err(no_tenant(slug)),
        Changed::NotActive(s) => Err(ApiError::conflict(
            "not_active",
            format!(
                "the tenant is {}; only an active tenant changes tier",
                s.as_str()
            ),
        )),
        Changed::Busy(why) => Err(ApiError::conflict("change_in_progress", why)),
        Changed::AccountRetiring { account_id, until } => Err(ApiError::conflict(
            "account_retiring",
            format!(
                "the tenant's previous account {account_id} is closed and AWS keeps it, with the \
                 tenant's root e-mail, until {}; it can have an account of its own again after that",
                until.to_rfc3339()
            ),
        )),
        Changed::NoWorkflow(from, to) => Err(ApiError::conflict(
            "no_tier_workflow",
            format!(
                "no workflow in workflows/ moves a tenant from {} to {}",
                from.as_str(),
                to.as_str()
            ),
        )),
    }
}

/// Move a tenant to another tier. It stays `active` and reachable throughout; `tier` reads the new
/// value once its endpoint is served by the new home (`tenant.tier.changed`).
#[utoipa::path(
    post, path = "/v1/tenants/{slug}/tier", tag = "ops",
    params(("slug" = String, Path)),
    request_body = TierRequest,
    responses(
        (status = 202, description = "The change started", body = TenantDetail),
        (status = 200, description = "The tenant has that tier, or is being moved to it", body = TenantDetail),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, description = "The token lacks the scope this route needs", body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Not active, or another change is under way", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn change_tier(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    Extension(Operator(who)): Extension<Operator>,
    ApiJson(req): ApiJson<TierRequest>,
) -> Result<(StatusCode, Json<TenantDetail>), ApiError> {
    let to = parse_tier(&req.tier)?;
    let c = tier::change(
        &state.pool,
        &state.workflows,
        &slug,
        to,
        &who,
        state.offboard_grace,
    )
    .await?;
    let status = if outcome(&slug, c)? {
        tracing::info!(tenant.slug = %slug, tier = to.as_str(), actor = %who, "operator tier change");
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(detail(&state, &slug).await?)))
}

/// The signed tier webhook: `{"slug", "tier"}`.
#[utoipa::path(
    post,
    path = "/v1/tier",
    tag = "signup",
    request_body(content = TierWebhook, content_type = "application/json"),
    params(
        ("webhook-id" = String, Header, description = "Unique message id; the idempotency key"),
        ("webhook-timestamp" = i64, Header, description = "Unix seconds; must be within 5 minutes of now"),
        ("webhook-signature" = String, Header, description = "`v1,<base64 HMAC-SHA256>`, space-separated if several"),
    ),
    responses(
        (status = 202, description = "The change started, or the tenant has that tier", body = SignupAccepted),
        (status = 400, description = "Invalid body", body = ErrorBody),
        (status = 401, description = "Missing or invalid signature, or stale timestamp", body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "Not active, or another change is under way", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
    )
)]
pub async fn tier_webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let (webhook_id, req) = match lifecycle_message::<TierWebhook>(&state, &headers, body).await? {
        Message::Repeat(answer) => return Ok(answer),
        Message::New(id, req) => (id, req),
    };
    let to = parse_tier(&req.tier)?;
    let c = tier::change(
        &state.pool,
        &state.workflows,
        &req.slug,
        to,
        "webhook",
        state.offboard_grace,
    )
    .await?;
    outcome(&req.slug, c)?;
    let tenant = db::tenants::by_slug(&state.pool, &req.slug)
        .await?
        .ok_or_else(|| no_tenant(&req.slug))?;
    accepted(&state, &webhook_id, &tenant).await
}
