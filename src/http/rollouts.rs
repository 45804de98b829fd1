//! Fleet rollouts: start one, list them, follow one, pause, resume or abort it.

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db;
use crate::db::rollouts::{Counts, Rollout};
use crate::lifecycle::rollout::{self, Control, Controlled, NewRollout, Started, WaveSize};

use super::error::{ApiError, ErrorBody};
use super::ops::ApiJson;
use super::{AppState, Operator};

#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutRequest {
    /// `tenant` (the tenant stack) or `baseline`.
    pub stack: String,
    /// Tenants in the first wave, which must succeed before the others start (default 1).
    pub canary: Option<i32>,
    /// Tenants per later wave: a number (default 10) or a share of the tenants after the canary
    /// such as `"10%"` (rounded up).
    pub wave_size: Option<WaveSizeInput>,
    /// Failed tenants tolerated before the rollout halts (default 0).
    pub max_failures: Option<i32>,
}

/// `wave_size`: a number of tenants, or a string `"N"` or `"P%"`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum WaveSizeInput {
    Tenants(i64),
    Text(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RolloutTenants {
    pub total: i64,
    pub updated: i64,
    pub failed: i64,
    /// Not updated yet (waiting for their wave, or being updated now).
    pub pending: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RolloutView {
    pub id: Uuid,
    pub stack: String,
    /// `running`, `paused`, `halted` (failures passed `max_failures`), `completed` or `aborted`.
    pub state: String,
    /// The template's version (first 12 hex digits of its SHA-256) as it was at the start.
    pub version: String,
    pub canary: i32,
    pub wave_size: i32,
    pub max_failures: i32,
    pub tenants: RolloutTenants,
    pub started_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RolloutPage {
    pub rollouts: Vec<RolloutView>,
}

fn view(r: Rollout, c: Counts) -> RolloutView {
    RolloutView {
        id: r.id,
        stack: r.stack,
        state: r.state.as_str().to_owned(),
        version: r.version,
        canary: r.canary,
        wave_size: r.wave_size,
        max_failures: r.max_failures,
        tenants: RolloutTenants {
            total: c.total,
            updated: c.updated,
            failed: c.failed,
            pending: c.pending + c.running,
        },
        started_by: r.actor,
        created_at: r.created_at,
        updated_at: r.updated_at,
    }
}

/// Start rolling the template now in `VEND_TEMPLATES_DIR` out to every active silo tenant.
#[utoipa::path(
    post, path = "/v1/rollouts", tag = "ops",
    request_body = RolloutRequest,
    responses(
        (status = 201, description = "Started", body = RolloutView),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, description = "The token lacks the scope this route needs", body = ErrorBody),
        (status = 409, description = "No rollout workflow is loaded", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn start_rollout(
    State(state): State<AppState>,
    Extension(Operator(who)): Extension<Operator>,
    ApiJson(req): ApiJson<RolloutRequest>,
) -> Result<(StatusCode, Json<RolloutView>), ApiError> {
    let file = match req.stack.as_str() {
        "tenant" => "tenant-stack.yaml",
        "baseline" => "baseline.yaml",
        other => {
            return Err(ApiError::bad_request(
                "invalid_stack",
                format!("stack must be tenant or baseline, not {other:?}"),
            ));
        }
    };
    let number = |v: Option<i32>, default: i32, min: i32, field: &'static str| match v {
        None => Ok(default),
        Some(n) if (min..=100_000).contains(&n) => Ok(n),
        Some(_) => Err(ApiError::bad_request(
            "invalid_body",
            format!("{field} must be a whole number from {min} to 100000"),
        )),
    };
    let canary = number(req.canary, 1, 0, "canary")?;
    let wave_size = match &req.wave_size {
        None => Ok(WaveSize::Tenants(10)),
        Some(WaveSizeInput::Tenants(n)) => WaveSize::parse(&n.to_string()),
        Some(WaveSizeInput::Text(t)) => WaveSize::parse(t),
    }
    .map_err(|e| ApiError::bad_request("invalid_body", e))?;
    let max_failures = number(req.max_failures, 0, 0, "max_failures")?;
    let path = state.templates_dir.join(file);
    let template = tokio::fs::read_to_string(&path).await.map_err(|e| {
        ApiError::new(
            StatusCode::CONFLICT,
            "template_unreadable",
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let new = NewRollout {
        stack: req.stack,
        template,
        canary,
        wave_size,
        max_failures,
    };
    match rollout::start(&state.pool, &state.workflows, &new, &who).await? {
        Started::Done(r, c) => {
            tracing::info!(rollout = %r.id, stack = %r.stack, version = %r.version, actor = %who, "rollout started");
            Ok((StatusCode::CREATED, Json(view(r, c))))
        }
        Started::Unavailable => Err(ApiError::conflict(
            "rollouts_unavailable",
            "no rollout workflow is loaded (workflows/rollout.toml)",
        )),
    }
}

/// Rollouts, newest first.
#[utoipa::path(
    get, path = "/v1/rollouts", tag = "ops",
    responses((status = 200, body = RolloutPage), (status = 401, body = ErrorBody), (status = 403, description = "The token lacks the scope this route needs", body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list_rollouts(State(state): State<AppState>) -> Result<Json<RolloutPage>, ApiError> {
    let mut out = Vec::new();
    for r in db::rollouts::list(&state.pool, 100).await? {
        let c = db::rollouts::counts(&state.pool, r.id).await?;
        out.push(view(r, c));
    }
    Ok(Json(RolloutPage { rollouts: out }))
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::bad_request("invalid_id", "not a rollout id"))
}

/// One rollout with its tenants' progress.
#[utoipa::path(
    get, path = "/v1/rollouts/{id}", tag = "ops",
    params(("id" = String, Path)),
    responses((status = 200, body = RolloutView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, description = "The token lacks the scope this route needs", body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn show_rollout(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, ApiError> {
    let id = parse_id(&id)?;
    let r = db::rollouts::get(&state.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no rollout {id}")))?;
    let c = db::rollouts::counts(&state.pool, id).await?;
    Ok(Json(view(r, c)))
}

async fn control(
    state: &AppState,
    id: &str,
    action: Control,
) -> Result<Json<RolloutView>, ApiError> {
    let id = parse_id(id)?;
    match rollout::control(&state.pool, id, action).await? {
        Controlled::Done(r, c) => Ok(Json(view(r, c))),
        Controlled::NotFound => Err(ApiError::not_found(format!("no rollout {id}"))),
        Controlled::Refused(s) => Err(ApiError::conflict(
            "invalid_transition",
            format!("the rollout is {s}; that is not possible now"),
        )),
    }
}

/// Pause: tenants being updated finish, no new ones start.
#[utoipa::path(
    post, path = "/v1/rollouts/{id}/pause", tag = "ops",
    params(("id" = String, Path)),
    responses((status = 200, body = RolloutView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, description = "The token lacks the scope this route needs", body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn pause_rollout(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, ApiError> {
    control(&state, &id, Control::Pause).await
}

/// Resume a paused rollout.
#[utoipa::path(
    post, path = "/v1/rollouts/{id}/resume", tag = "ops",
    params(("id" = String, Path)),
    responses((status = 200, body = RolloutView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, description = "The token lacks the scope this route needs", body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn resume_rollout(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, ApiError> {
    control(&state, &id, Control::Resume).await
}

/// Abort: no new tenants start; those being updated finish.
#[utoipa::path(
    post, path = "/v1/rollouts/{id}/abort", tag = "ops",
    params(("id" = String, Path)),
    responses((status = 200, body = RolloutView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, description = "The token lacks the scope this route needs", body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn abort_rollout(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RolloutView>, ApiError> {
    control(&state, &id, Control::Abort).await
}
