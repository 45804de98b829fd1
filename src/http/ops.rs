//! The ops API: tenants, their history, retry and requeue, deliveries, metrics.

use axum::Json;
use axum::extract::{Extension, FromRequest, FromRequestParts, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::db;
use crate::domain::{StepState, TenantState};
use crate::lifecycle;
use crate::lifecycle::offboard::{Offboarded, Restored};

use super::error::{ApiError, ErrorBody};
use super::views::*;
use super::{AppState, Operator};

/// `Json` whose rejections are [`ApiError`]s (JSON bodies, right status codes).
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

/// `Query` whose rejections are [`ApiError`]s.
#[derive(FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only tenants in this state.
    pub state: Option<String>,
    /// Only tenants of this tier: `free`, `pro` or `enterprise`.
    pub tier: Option<String>,
    /// Only tenants whose current step (in flight or failed) has this name.
    pub step: Option<String>,
    /// Only tenants whose current step's last error has this code.
    pub error_code: Option<String>,
    /// Only tenants whose current step started longer ago than this (`30m`, `2h`, `1d`).
    pub in_step_longer_than: Option<String>,
    /// Page size, 1 to 500; default 50.
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The listing filter from its query parameters (empty ones mean no filter), or what is wrong.
pub(super) fn list_filter(
    state: Option<&str>,
    tier: Option<&str>,
    step: Option<&str>,
    error_code: Option<&str>,
    in_step_longer_than: Option<&str>,
) -> Result<db::tenants::ListFilter, ApiError> {
    fn given(v: Option<&str>) -> Option<&str> {
        v.map(str::trim).filter(|v| !v.is_empty())
    }
    Ok(db::tenants::ListFilter {
        state: given(state)
            .map(|s| {
                TenantState::parse(s).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_state",
                        "state must be one of pending, provisioning, active, failed, offboarding, closed",
                    )
                })
            })
            .transpose()?,
        tier: given(tier)
            .map(|t| {
                crate::domain::Tier::parse(t).map_err(|_| {
                    ApiError::bad_request("invalid_tier", "tier must be one of free, pro, enterprise")
                })
            })
            .transpose()?,
        step: given(step).map(str::to_owned),
        error_code: given(error_code).map(str::to_owned),
        in_step_longer_than: given(in_step_longer_than)
            .map(|d| {
                humantime::parse_duration(d).map_err(|_| {
                    ApiError::bad_request(
                        "invalid_duration",
                        "in_step_longer_than must be a duration such as 30m, 2h or 1d",
                    )
                })
            })
            .transpose()?,
        step_failed: false,
    })
}

/// List tenants, newest first (filtered by the current step: newest current run first).
#[utoipa::path(
    get, path = "/v1/tenants", tag = "ops",
    params(ListParams),
    responses(
        (status = 200, body = TenantPage),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, description = "The token lacks the scope this route needs", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn list_tenants(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<ListParams>,
) -> Result<Json<TenantPage>, ApiError> {
    let filter = list_filter(
        p.state.as_deref(),
        p.tier.as_deref(),
        p.step.as_deref(),
        p.error_code.as_deref(),
        p.in_step_longer_than.as_deref(),
    )?;
    let limit = match p.limit.as_deref() {
        None => 50,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request("invalid_limit", "limit must be a number from 1 to 500")
            })?,
    };
    let before = p
        .cursor
        .as_deref()
        .map(|c| {
            Uuid::parse_str(c).map_err(|_| {
                ApiError::bad_request("invalid_cursor", "cursor is not one this API returned")
            })
        })
        .transpose()?;
    // One more than asked tells whether another page exists without a count query.
    let mut tenants = db::tenants::list(&state.pool, &filter, before, limit + 1).await?;
    let next_cursor = if tenants.len() as i64 > limit {
        tenants.truncate(limit as usize);
        tenants.last().map(|t| t.cursor.to_string())
    } else {
        None
    };
    Ok(Json(TenantPage {
        tenants: tenants
            .iter()
            .map(|l| TenantView::from(&l.tenant))
            .collect(),
        next_cursor,
    }))
}

pub(super) async fn detail(state: &AppState, slug: &str) -> Result<TenantDetail, ApiError> {
    let tenant = db::tenants::by_slug(&state.pool, slug)
        .await?
        .ok_or_else(|| no_tenant(slug))?;
    Ok(detail_of(state, &tenant).await?)
}

/// The tenant with the state of every step of its current run's workflow.
pub(super) async fn detail_of(
    state: &AppState,
    tenant: &db::tenants::Tenant,
) -> Result<TenantDetail, sqlx::Error> {
    let steps = match db::tenants::current_run(&state.pool, tenant.id).await? {
        Some(run) => db::steps::with_unreached(
            db::steps::for_run(&state.pool, run.id).await?,
            state.workflows.get(&run.workflow),
        ),
        None => Vec::new(),
    };
    Ok(TenantDetail {
        tenant: TenantView::from(tenant),
        steps: steps.iter().map(StepView::from).collect(),
        resources: tenant.resources.clone(),
    })
}

pub(super) fn no_tenant(slug: &str) -> ApiError {
    ApiError::not_found(format!("no tenant {slug:?}"))
}

/// One tenant with the state of every step of its workflow.
#[utoipa::path(
    get, path = "/v1/tenants/{slug}", tag = "ops",
    params(("slug" = String, Path)),
    responses((status = 200, body = TenantDetail), (status = 401, body = ErrorBody), (status = 403, description = "The token lacks the scope this route needs", body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn show_tenant(
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<TenantDetail>, ApiError> {
    Ok(Json(detail(&state, &slug).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HistoryParams {
    /// Stored entries per page, 1 to 1000; default 1000.
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Every transition, attempt, error and operator action, oldest first, a page at a time. Repeated
/// polls and throttles of one attempt are one entry with `detail.count`.
#[utoipa::path(
    get, path = "/v1/tenants/{slug}/history", tag = "ops",
    params(("slug" = String, Path), HistoryParams),
    responses((status = 200, body = HistoryView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, description = "The token lacks the scope this route needs", body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn tenant_history(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    ApiQuery(p): ApiQuery<HistoryParams>,
) -> Result<Json<HistoryView>, ApiError> {
    let limit = match p.limit.as_deref() {
        None => 1000,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=1000).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_limit",
                    "limit must be a whole number from 1 to 1000",
                )
            })?,
    };
    let after = match p.cursor.as_deref() {
        None => 0,
        Some(c) => c.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_cursor",
                "cursor must be a next_cursor this API gave",
            )
        })?,
    };
    let tenant = db::tenants::by_slug(&state.pool, &slug)
        .await?
        .ok_or_else(|| no_tenant(&slug))?;
    // The steps first: an attempt that ends in between is then in the history (and not shown twice),
    // rather than in neither.
    let steps = match db::tenants::current_run(&state.pool, tenant.id).await? {
        Some(run) => db::steps::for_run(&state.pool, run.id).await?,
        None => Vec::new(),
    };
    // One more than asked: whether there is a next page.
    let mut entries = db::history::page(&state.pool, tenant.id, after, limit + 1).await?;
    let next_cursor = if entries.len() as i64 > limit {
        entries.truncate(limit as usize);
        entries.last().map(|e| e.id.to_string())
    } else {
        None
    };
    // The attempt running now belongs after the last stored entry: on the last page only.
    let running = match next_cursor {
        None => steps.iter().find(|s| s.state == StepState::Running),
        Some(_) => None,
    };
    Ok(Json(HistoryView {
        slug: tenant.slug,
        history: super::views::history(entries, running),
        next_cursor,
    }))
}

/// Run the failed or backing-off step now. A failed step gets a fresh attempt budget.
#[utoipa::path(
    post, path = "/v1/tenants/{slug}/retry", tag = "ops",
    params(("slug" = String, Path)),
    responses(
        (status = 200, description = "The step is due now", body = TenantDetail),
        (status = 401, body = ErrorBody), (status = 403, description = "The token lacks the scope this route needs", body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Nothing to retry", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn retry_tenant(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    Extension(Operator(who)): Extension<Operator>,
) -> Result<Json<TenantDetail>, ApiError> {
    use lifecycle::operator::Retried;
    match lifecycle::operator::retry(&state.pool, &state.workflows, &slug, &who).await? {
        Retried::Done { step } => {
            tracing::info!(tenant.slug = %slug, step = %step, actor = %who, "operator retry");
        }
        Retried::NotFound => return Err(no_tenant(&slug)),
        Retried::NoRun => {
            return Err(ApiError::conflict(
                "nothing_to_retry",
                "the tenant has no run",
            ));
        }
        Retried::Nothing => {
            return Err(ApiError::conflict(
                "nothing_to_retry",
                "no step is failed or waiting",
            ));
        }
    }
    Ok(Json(detail(&state, &slug).await?))
}

/// Retry every failed tenant matching a filter (its failed step, its error code), each as
/// `POST /v1/tenants/{slug}/retry` would; `dry_run` only lists them. At most 1,000 a request.
#[utoipa::path(
    post, path = "/v1/retries", tag = "ops",
    request_body = BulkRetryRequest,
    responses(
        (status = 200, description = "The tenants matched, and those retried", body = BulkRetryView),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, description = "The token lacks the scope this route needs", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn bulk_retry(
    State(state): State<AppState>,
    Extension(Operator(who)): Extension<Operator>,
    ApiJson(req): ApiJson<BulkRetryRequest>,
) -> Result<Json<BulkRetryView>, ApiError> {
    for (field, v) in [("step", &req.step), ("error_code", &req.error_code)] {
        if v.as_deref().is_some_and(|v| v.is_empty() || v.len() > 200) {
            return Err(ApiError::bad_request(
                "invalid_body",
                format!("{field} must be 1 to 200 characters when given"),
            ));
        }
    }
    let done = lifecycle::operator::retry_failed(
        &state.pool,
        &state.workflows,
        req.step.as_deref(),
        req.error_code.as_deref(),
        req.dry_run,
        &who,
    )
    .await?;
    if !req.dry_run {
        tracing::info!(matched = done.matched.len(), retried = done.retried.len(), actor = %who, "operator bulk retry");
    }
    Ok(Json(BulkRetryView {
        dry_run: req.dry_run,
        matched: done.matched.len(),
        tenants: done
            .matched
            .into_iter()
            .map(|t| BulkRetryTenant {
                slug: t.slug,
                step: t.step,
                error_code: t.error_code,
            })
            .collect(),
        retried: done.retried,
    }))
}

/// Rewind the tenant to a step of its workflow and run from there.
#[utoipa::path(
    post, path = "/v1/tenants/{slug}/requeue", tag = "ops",
    params(("slug" = String, Path)),
    request_body = RequeueRequest,
    responses(
        (status = 200, description = "Rewound; the step is due now", body = TenantDetail),
        (status = 400, description = "Not a step of the tenant's workflow", body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, description = "The token lacks the scope this route needs", body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "A step is running, or an earlier step has not succeeded", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn requeue_tenant(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    Extension(Operator(who)): Extension<Operator>,
    ApiJson(req): ApiJson<RequeueRequest>,
) -> Result<Json<TenantDetail>, ApiError> {
    use lifecycle::operator::Requeued;
    match lifecycle::operator::requeue(&state.pool, &state.workflows, &slug, &req.from_step, &who)
        .await?
    {
        Requeued::Done => {}
        Requeued::NotFound => return Err(no_tenant(&slug)),
        Requeued::NoRun => return Err(ApiError::conflict("no_run", "the tenant has no run")),
        Requeued::UnknownWorkflow(w) => {
            return Err(ApiError::conflict(
                "unknown_workflow",
                format!("workflow {w:?} is not loaded"),
            ));
        }
        Requeued::UnknownStep { workflow, steps } => {
            return Err(ApiError::bad_request(
                "unknown_step",
                format!(
                    "{:?} is not a step of workflow {workflow} (steps: {})",
                    req.from_step,
                    steps.join(", ")
                ),
            ));
        }
        Requeued::StepRunning(step) => {
            return Err(ApiError::conflict(
                "step_running",
                format!("step {step} is running; requeue when it has finished"),
            ));
        }
        Requeued::EarlierStepNotDone(step) => {
            return Err(ApiError::conflict(
                "earlier_step_not_done",
                format!(
                    "step {step} comes before {} and has not succeeded; requeue from it instead",
                    req.from_step
                ),
            ));
        }
    }
    tracing::info!(tenant.slug = %slug, from_step = %req.from_step, actor = %who, "operator requeue");
    Ok(Json(detail(&state, &slug).await?))
}

/// Offboard the tenant: its endpoint goes dark now; after `VEND_OFFBOARD_GRACE` its resources are
/// deleted and its account closed. Already offboarding: nothing changes.
#[utoipa::path(
    post, path = "/v1/tenants/{slug}/offboard", tag = "ops",
    params(("slug" = String, Path)),
    request_body = OffboardRequest,
    responses(
        (status = 202, description = "Offboarding (started now or before)", body = TenantDetail),
        (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, description = "The token lacks the scope this route needs", body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The tenant is closed", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn offboard_tenant(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    Extension(Operator(who)): Extension<Operator>,
    ApiJson(req): ApiJson<OffboardRequest>,
) -> Result<(StatusCode, Json<TenantDetail>), ApiError> {
    let why = reason(req.reason.as_deref(), "requested by an operator")
        .map_err(|m| ApiError::bad_request("invalid_body", m))?;
    match lifecycle::offboard::offboard(
        &state.pool,
        &state.workflows,
        &slug,
        &why,
        &who,
        state.offboard_grace,
    )
    .await?
    {
        Offboarded::Started(_) => {
            tracing::info!(tenant.slug = %slug, actor = %who, "operator offboard");
        }
        Offboarded::Already(_) => {}
        Offboarded::NotFound => return Err(no_tenant(&slug)),
        Offboarded::Closed => return Err(super::offboard::closed(&slug)),
        Offboarded::Unavailable => return Err(super::offboard::unavailable()),
    }
    Ok((StatusCode::ACCEPTED, Json(detail(&state, &slug).await?)))
}

/// Bring an offboarding tenant back while its grace period lasts: the offboard stops and its endpoint
/// is lit again. `409` once the grace period is over.
#[utoipa::path(
    post, path = "/v1/tenants/{slug}/restore", tag = "ops",
    params(("slug" = String, Path)),
    responses(
        (status = 200, description = "Restored", body = TenantDetail),
        (status = 401, body = ErrorBody), (status = 403, description = "The token lacks the scope this route needs", body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "Not offboarding, or its grace period is over", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
pub async fn restore_tenant(
    State(state): State<AppState>,
    Path(slug): Path<String>,
    Extension(Operator(who)): Extension<Operator>,
) -> Result<Json<TenantDetail>, ApiError> {
    match lifecycle::offboard::restore(&state.pool, &state.workflows, &slug, &who).await? {
        Restored::Done(_) => {
            tracing::info!(tenant.slug = %slug, actor = %who, "operator restore");
        }
        Restored::NotFound => return Err(no_tenant(&slug)),
        Restored::NotOffboarding(s) => {
            return Err(ApiError::conflict(
                "not_offboarding",
                format!("the tenant is {}, not offboarding", s.as_str()),
            ));
        }
        Restored::Busy(step) => {
            return Err(ApiError::conflict(
                "step_running",
                format!("step {step} is running; restore when it has finished"),
            ));
        }
        Restored::TooLate(deadline) => {
            return Err(ApiError::conflict(
                "grace_period_over",
                match deadline {
                    Some(d) => format!(
                        "the grace period ended at {}; the tenant's teardown has begun",
                        d.to_rfc3339()
                    ),
                    None => "the grace period is over; the tenant's teardown has begun".into(),
                },
            ));
        }
    }
    Ok(Json(detail(&state, &slug).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DriftParams {
    /// Only this tenant's findings.
    pub tenant: Option<String>,
}

/// Open drift findings, newest first.
#[utoipa::path(
    get, path = "/v1/drift", tag = "ops",
    params(DriftParams),
    responses((status = 200, body = DriftView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, description = "The token lacks the scope this route needs", body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn drift(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<DriftParams>,
) -> Result<Json<DriftView>, ApiError> {
    let findings = db::drift::open(&state.pool, p.tenant.as_deref()).await?;
    Ok(Json(DriftView {
        findings: findings
            .into_iter()
            .map(|f| DriftFindingView {
                slug: f.slug,
                resource: f.resource,
                detail: f.detail,
                detected_at: f.detected_at,
                repaired_at: f.repaired_at,
            })
            .collect(),
    }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeliveryParams {
    /// `pending`, `delivered`, `failed` or `disabled`.
    pub state: Option<String>,
    /// Only this tenant's events.
    pub tenant: Option<String>,
    /// 1 to 500; default 100.
    pub limit: Option<String>,
}

/// Progress event deliveries, newest first: where each event stands with each endpoint.
#[utoipa::path(
    get, path = "/v1/deliveries", tag = "ops",
    params(DeliveryParams),
    responses((status = 200, body = DeliveryPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, description = "The token lacks the scope this route needs", body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn list_deliveries(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<DeliveryParams>,
) -> Result<Json<DeliveryPage>, ApiError> {
    if let Some(s) = &p.state
        && crate::domain::DeliveryState::parse(s).is_none()
    {
        return Err(ApiError::bad_request(
            "invalid_state",
            "state must be one of pending, delivered, failed, disabled",
        ));
    }
    let limit = match p.limit.as_deref() {
        None => 100,
        Some(l) => l
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=500).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request("invalid_limit", "limit must be a number from 1 to 500")
            })?,
    };
    let rows =
        db::outbox::list_deliveries(&state.pool, p.state.as_deref(), p.tenant.as_deref(), limit)
            .await?;
    Ok(Json(DeliveryPage {
        deliveries: rows
            .into_iter()
            .map(|d| DeliveryView {
                webhook_id: crate::engine::dispatcher::webhook_id(d.event_id),
                event_id: d.event_id.to_string(),
                event_type: d.event_type,
                tenant: d.slug,
                endpoint: d.endpoint_id,
                state: d.state,
                attempts: d.attempts,
                next_attempt_at: d.next_attempt_at,
                last_status: d.last_status,
                last_error: d.last_error,
                delivered_at: d.delivered_at,
                created_at: d.created_at,
            })
            .collect(),
    }))
}

/// Prometheus metrics: this process's counters plus fleet-wide gauges read from the database.
#[utoipa::path(
    get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"), (status = 401, body = ErrorBody), (status = 403, description = "The token lacks the scope this route needs", body = ErrorBody)),
    security(("bearer" = []))
)]
pub async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let m = &state.metrics;
    let (steps, due) = db::steps::stats(&state.pool).await?;
    for s in StepState::ALL {
        let n = steps
            .iter()
            .find(|(k, _)| k == s.as_str())
            .map_or(0, |(_, n)| *n);
        m.steps_by_state
            .get_or_create(&crate::telemetry::StateLabels {
                state: s.as_str().into(),
            })
            .set(n);
    }
    m.queue_depth.set(due);
    let tenants = db::tenants::count_by_state(&state.pool).await?;
    for s in TenantState::ALL {
        let n = tenants
            .iter()
            .find(|(k, _)| k == s.as_str())
            .map_or(0, |(_, n)| *n);
        m.tenants_by_state
            .get_or_create(&crate::telemetry::StateLabels {
                state: s.as_str().into(),
            })
            .set(n);
    }
    for (state_name, n) in db::outbox::count_by_state(&state.pool).await? {
        m.deliveries_by_state
            .get_or_create(&crate::telemetry::StateLabels { state: state_name })
            .set(n);
    }
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response())
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

/// Ready: the database is reachable and the AWS side (management account, account index) is prepared;
/// 503 with the reason until then.
#[utoipa::path(
    get, path = "/readyz", tag = "health",
    responses((status = 200, body = Health), (status = 503, body = ErrorBody))
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    match tokio::time::timeout(std::time::Duration::from_secs(2), db::ping(&state.pool)).await {
        Ok(Ok(())) => {}
        _ => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                "the database is not reachable",
            ));
        }
    }
    match state.readiness.waiting_for() {
        None => Ok(Json(Health {
            status: "ready".into(),
        })),
        Some(reason) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "starting",
            format!("not ready: {reason}"),
        )),
    }
}
