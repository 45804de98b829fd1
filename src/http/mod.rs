//! HTTP: the signup webhook, the ops API and health. The router and the OpenAPI document are built from
//! the same annotated handlers, so they cannot drift apart.

mod charts;
pub mod console;
pub mod error;
pub mod offboard;
pub mod ops;
pub mod rollouts;
pub mod server;
pub mod signup;
pub mod tier;
pub mod views;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sqlx::PgPool;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::{OpsTokens, Scope};
use crate::domain::{SlugRules, Workflows};
use crate::standard_webhooks::Secret;
use crate::telemetry::Metrics;

use error::ApiError;

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    /// The signup path's writer (group commit).
    pub intake: Arc<crate::lifecycle::signup::Intake>,
    pub workflows: Arc<Workflows>,
    pub signup_secret: Secret,
    pub ops_tokens: OpsTokens,
    /// Reserved slugs and the account-naming limits a signup's slug must pass.
    pub slug_rules: Arc<SlugRules>,
    pub metrics: Arc<Metrics>,
    /// Whether the AWS side is ready (`/readyz`).
    pub readiness: crate::readiness::Readiness,
    /// Wakes workers and the dispatcher after a signup commits.
    pub nudges: Nudges,
    /// `VEND_OFFBOARD_GRACE`.
    pub offboard_grace: std::time::Duration,
    /// `VEND_ALLOWED_REGIONS` and the default tenant region.
    pub regions: crate::domain::Regions,
    /// `VEND_TEMPLATES_DIR`: a rollout takes its template from here when it starts.
    pub templates_dir: std::path::PathBuf,
}

/// The post-commit notifications of the signup path: workers and the dispatcher, in one nudge.
#[derive(Clone)]
pub struct Nudges {
    pub signup: Arc<crate::db::Nudge>,
}

impl Nudges {
    pub fn new(pool: &PgPool) -> Self {
        Self {
            signup: crate::db::Nudge::new(
                pool.clone(),
                &[crate::db::STEPS_CHANNEL, crate::db::OUTBOX_CHANNEL],
            ),
        }
    }
}

/// The operator behind an ops request: its token's name, recorded in history.
#[derive(Debug, Clone)]
pub struct Operator(pub String);

pub use crate::config::RequestLimits;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "vend",
        description = "Account-vending control plane: signup webhook, ops API and health."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "signup", description = "The signed signup webhook from the SaaS frontend"),
        (name = "ops", description = "Operators: bearer token VEND_OPS_TOKEN"),
        (name = "health", description = "Unauthenticated probes"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Routes that need the ops token.
fn ops_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ops::list_tenants))
        .routes(routes!(ops::show_tenant))
        .routes(routes!(ops::tenant_history))
        .routes(routes!(ops::retry_tenant))
        .routes(routes!(ops::bulk_retry))
        .routes(routes!(ops::requeue_tenant))
        .routes(routes!(ops::offboard_tenant))
        .routes(routes!(ops::restore_tenant))
        .routes(routes!(tier::change_tier))
        .routes(routes!(ops::list_deliveries))
        .routes(routes!(ops::drift))
        .routes(routes!(rollouts::start_rollout, rollouts::list_rollouts))
        .routes(routes!(rollouts::show_rollout))
        .routes(routes!(rollouts::pause_rollout))
        .routes(routes!(rollouts::resume_rollout))
        .routes(routes!(rollouts::abort_rollout))
        .routes(routes!(ops::metrics))
}

/// Routes that authenticate otherwise (the signup signature).
fn open_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(signup::signup))
        .routes(routes!(offboard::offboard_webhook))
        .routes(routes!(tier::tier_webhook))
}

/// Unauthenticated probes. They stay outside the in-flight limit, so a flood of slow requests cannot
/// make an orchestrator think vend is dead.
fn probe_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::readyz))
}

/// The OpenAPI document of every route.
pub fn openapi() -> utoipa::openapi::OpenApi {
    OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .merge(ops_routes())
        .merge(open_routes())
        .merge(probe_routes())
        .into_openapi()
}

/// Paths (OpenAPI form, e.g. `/v1/tenants/{slug}`) that must answer 401 without the ops token: every
/// route but the probes and the signed signup webhook. Derived from the router, so a new route cannot
/// be missed.
pub fn protected_paths() -> Vec<(String, Vec<String>)> {
    let mut router = ops_routes();
    let doc = router.to_openapi();
    let mut out: Vec<(String, Vec<String>)> = doc
        .paths
        .paths
        .iter()
        .map(|(path, item)| {
            let mut methods = Vec::new();
            if item.get.is_some() {
                methods.push("GET".to_owned());
            }
            if item.post.is_some() {
                methods.push("POST".to_owned());
            }
            if item.put.is_some() {
                methods.push("PUT".to_owned());
            }
            if item.delete.is_some() {
                methods.push("DELETE".to_owned());
            }
            (path.clone(), methods)
        })
        .collect();
    out.push(("/openapi.json".into(), vec!["GET".into()]));
    out
}

pub fn router(state: AppState) -> Router {
    router_with(state, RequestLimits::default())
}

pub fn router_with(state: AppState, limits: RequestLimits) -> Router {
    let doc = Arc::new(openapi());
    let (ops, _) = ops_routes()
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_ops_token,
        ))
        .split_for_parts();
    let (open, _) = open_routes().split_for_parts();
    Router::new()
        .merge(ops)
        .merge(open)
        .merge(console::routes())
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(DefaultBodyLimit::max(signup::MAX_BODY))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            limits.timeout,
        ))
        // A flood is refused at the door (503) rather than queued without bound. One semaphore for
        // every route: Router::layer wraps each route on its own.
        .layer(
            tower::ServiceBuilder::new()
                .layer(axum::error_handling::HandleErrorLayer::new(
                    |_: tower::BoxError| async {
                        ApiError::new(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "overloaded",
                            "too many requests in flight; retry shortly",
                        )
                    },
                ))
                .load_shed()
                .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
                    limits.max_in_flight,
                )),
        )
        // Probes join after the limits above, so those do not apply to them.
        .merge(probe_routes().split_for_parts().0)
        // Outside the timeout and the shedding, so their answers get the JSON error shape too.
        .layer(middleware::from_fn(json_errors))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path())
        }))
        .with_state(state)
}

/// The scope a request needs: `metrics` for `/metrics`, `read` to look, `write` to change.
fn required_scope(req: &Request) -> Scope {
    if req.uri().path() == "/metrics" {
        Scope::Metrics
    } else if req.method() == axum::http::Method::GET || req.method() == axum::http::Method::HEAD {
        Scope::Read
    } else {
        Scope::Write
    }
}

async fn require_ops_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token else {
        return ApiError::unauthorized(
            "missing bearer token (Authorization: Bearer <VEND_OPS_TOKEN>)",
        )
        .into_response();
    };
    let Some(found) = state.ops_tokens.authenticate(token) else {
        return ApiError::unauthorized("invalid bearer token").into_response();
    };
    let scope = required_scope(&req);
    if !found.allows(scope) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "the token {:?} lacks the {} scope",
                found.name,
                scope.as_str()
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(Operator(found.name.clone()));
    next.run(req).await
}

/// Errors produced below the handlers (405, timeouts) come without a body; give them the JSON shape
/// every other error has.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if (status.is_client_error() || status.is_server_error())
        && !resp.headers().contains_key(header::CONTENT_TYPE)
    {
        let (code, message) = match status {
            StatusCode::METHOD_NOT_ALLOWED => {
                ("method_not_allowed", "method not allowed on this route")
            }
            StatusCode::REQUEST_TIMEOUT => ("timeout", "the request took too long"),
            StatusCode::PAYLOAD_TOO_LARGE => ("payload_too_large", "the body is too large"),
            _ => ("error", "request failed"),
        };
        let mut new = ApiError::new(status, code, message).into_response();
        if let Some(allow) = resp.headers().get(header::ALLOW) {
            new.headers_mut().insert(header::ALLOW, allow.clone());
        }
        return new;
    }
    resp
}
