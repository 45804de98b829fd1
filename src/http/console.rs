//! The ops console at `/ui`: server-rendered HTML (maud), readable without JavaScript. A login with an
//! ops token makes a session (cookie `vend_session`: HttpOnly, SameSite=Strict, Secure behind https)
//! kept in Postgres, so any replica serves it; the token's current scopes apply on every request, and
//! every action is a POST that needs the session and its CSRF token (403 without). Actions go through
//! `lifecycle`, like the API's.

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::Scope;
use crate::db;
use crate::db::sessions::Session;
use crate::domain::{DeliveryState, StepState, TenantState};
use crate::lifecycle;

use super::AppState;
use super::views::{StepView, TenantDetail, TenantView};

const COOKIE: &str = "vend_session";
/// How long a console session lasts.
const SESSION_HOURS: i64 = 12;

/// Routes under `/ui`.
pub fn routes() -> axum::Router<AppState> {
    use axum::routing::{get, post};
    axum::Router::new()
        .route("/ui", get(home))
        .route("/ui/login", post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/fleet", get(fleet_page))
        .route("/ui/retries", get(retries_page).post(retries_action))
        .route("/ui/tenants/{slug}", get(tenant_page))
        .route("/ui/tenants/{slug}/{action}", post(action))
}

fn page(title: &str, who: Option<&Session>, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " · vend" }
                    style { (CSS) }
                }
                body {
                    header {
                        a href="/ui" { strong { "vend" } " ops console" }
                        @if who.is_some() {
                            nav { a href="/ui" { "Tenants" } " " a href="/ui/fleet" { "Fleet" } }
                        }
                        @if let Some(s) = who {
                            span.who { "signed in as " (s.operator) }
                            form method="post" action="/ui/logout" {
                                input type="hidden" name="csrf" value=(s.csrf);
                                button { "Sign out" }
                            }
                        }
                    }
                    main { (body) }
                    script { (PreEscaped(LIVE_JS)) }
                }
            }
        }
        .into_string(),
    )
}

/// A page region marked `data-live="true"` (a tenant that is moving) is fetched again every 2 s and
/// swapped in place until it says it is at rest; focus in a form pauses it so nothing typed is lost.
/// Without JavaScript the page is the same, only not updated (the `<noscript>` refresh covers that).
const LIVE_JS: &str = "(function(){var live=document.getElementById('live');\
if(!live||live.dataset.live!=='true')return;var t=setInterval(async function(){\
var a=document.activeElement;if(a&&a.form)return;try{var r=await fetch(location.href,{credentials:'same-origin'});\
if(!r.ok)return;var d=new DOMParser().parseFromString(await r.text(),'text/html');\
var n=d.getElementById('live');if(!n)return;document.getElementById('live').replaceWith(n);\
if(n.dataset.live!=='true')clearInterval(t);}catch(e){}},2000);})();";

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#222}\
header{display:flex;gap:1em;align-items:center;padding:.6em 1em;background:#1f2937;color:#fff}\
header a{color:#fff;text-decoration:none}.who{margin-left:auto}main{padding:1em}\
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.3em .6em;text-align:left}\
.state-failed{color:#b91c1c}.state-active,.state-succeeded{color:#15803d}.state-waiting{color:#b45309}\
.why{color:#555}form.inline{display:inline}.counts span{margin-right:1em}\
header nav a{margin-right:.8em;color:#cbd5e1}.legend span{margin-right:1em}";

fn digest(id: &str) -> Vec<u8> {
    Sha256::digest(id.as_bytes()).to_vec()
}

fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// The request's session, if its cookie names a live one whose token is still configured; the
/// token's scopes as configured now.
async fn session(state: &AppState, headers: &HeaderMap) -> Result<Option<Session>, sqlx::Error> {
    let Some(id) = cookie_of(headers) else {
        return Ok(None);
    };
    let Some(mut s) = db::sessions::find(&state.pool, &digest(&id)).await? else {
        return Ok(None);
    };
    match state.ops_tokens.by_digest(&s.token_digest) {
        Some(t) => {
            s.operator = t.name.clone();
            s.write = t.allows(Scope::Write);
            Ok(Some(s))
        }
        // The token was removed from the configuration: its sessions end with it.
        None => Ok(None),
    }
}

fn forbidden(why: &str) -> Response {
    (
        StatusCode::FORBIDDEN,
        page(
            "Forbidden",
            None,
            html! { h1 { "Forbidden" } p { (why) } p { a href="/ui" { "Back to the console" } } },
        ),
    )
        .into_response()
}

fn server_error(e: sqlx::Error) -> Response {
    tracing::error!(error = %e, "console: database error");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        page(
            "Error",
            None,
            html! { h1 { "Something went wrong" } p { "The database did not answer; try again." } },
        ),
    )
        .into_response()
}

fn login_form(message: Option<&str>) -> Markup {
    html! {
        h1 { "Sign in" }
        @if let Some(m) = message { p.state-failed { (m) } }
        form method="post" action="/ui/login" {
            label { "Ops token " input type="password" name="token" autocomplete="off" required; }
            " "
            button { "Sign in" }
        }
    }
}

/// `GET /ui/fleet`: signups and activations per hour over the last day, AWS throttles per service and
/// minute over the last hour, CreateAccount slots in use and the line for them, the latest rollouts.
async fn fleet_page(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let s = match session(&state, &headers).await {
        Ok(Some(s)) => s,
        Ok(None) => return Redirect::to("/ui").into_response(),
        Err(e) => return server_error(e),
    };
    match fleet_markup(&state, Utc::now()).await {
        Ok(body) => page("Fleet", Some(&s), body).into_response(),
        Err(e) => server_error(e),
    }
}

async fn fleet_markup(state: &AppState, now: DateTime<Utc>) -> Result<Markup, sqlx::Error> {
    use super::charts::{Series, bars};
    use crate::domain::EventType;
    use chrono::DurationRound;
    const HOURS: i64 = 24;
    let first = now
        .duration_trunc(chrono::TimeDelta::hours(1))
        .unwrap_or(now)
        - chrono::TimeDelta::hours(HOURS - 1);
    let rows = db::fleet::events_per_hour(
        &state.pool,
        first,
        &[EventType::TenantCreated, EventType::TenantActive],
    )
    .await?;
    let mut signups = vec![0i64; HOURS as usize];
    let mut activations = vec![0i64; HOURS as usize];
    for (hour, kind, n) in rows {
        let i = (hour - first).num_hours();
        let Ok(i) = usize::try_from(i) else { continue };
        let Some(slot) = (if kind == EventType::TenantCreated.as_str() {
            signups.get_mut(i)
        } else {
            activations.get_mut(i)
        }) else {
            continue;
        };
        *slot += n;
    }
    let labels: Vec<String> = (0..HOURS)
        .map(|h| {
            (first + chrono::TimeDelta::hours(h))
                .format("%H:00")
                .to_string()
        })
        .collect();
    // Throttles per service and minute over the last hour, every replica's.
    let first_minute = now
        .duration_trunc(chrono::TimeDelta::minutes(1))
        .unwrap_or(now)
        - chrono::TimeDelta::minutes(59);
    let mut by_service: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for (minute, service, n) in db::fleet::throttles_since(&state.pool, first_minute).await? {
        let Ok(i) = usize::try_from((minute - first_minute).num_minutes()) else {
            continue;
        };
        if let Some(slot) = by_service
            .entry(service)
            .or_insert_with(|| vec![0; 60])
            .get_mut(i)
        {
            *slot += n;
        }
    }
    let minute_labels: Vec<String> = (0..60)
        .map(|m| {
            (first_minute + chrono::TimeDelta::minutes(m))
                .format("%H:%M")
                .to_string()
        })
        .collect();
    const PALETTE: [&str; 6] = [
        "#b45309", "#7c3aed", "#0891b2", "#be123c", "#4d7c0f", "#334155",
    ];
    let throttle_series: Vec<Series<'_>> = by_service
        .iter()
        .enumerate()
        .map(|(i, (service, values))| Series {
            label: service,
            color: PALETTE[i % PALETTE.len()],
            values,
        })
        .collect();
    let in_use = db::slots::open(&state.pool).await?;
    let in_line = db::fleet::slot_queue(&state.pool).await?;
    let rollouts = db::rollouts::list(&state.pool, 10).await?;
    Ok(html! {
        h1 { "Fleet" }
        h2 { "Signups and activations per hour" small { " last 24 hours, UTC" } }
        (bars(&labels, 3, &[
            Series { label: "signups", color: "#2563eb", values: &signups },
            Series { label: "activations", color: "#16a34a", values: &activations },
        ]))
        p { "Last 24 hours: " strong { (signups.iter().sum::<i64>()) } " signups, "
            strong { (activations.iter().sum::<i64>()) } " activations." }
        h2 { "AWS throttles per minute" small { " last hour, every replica" } }
        @if throttle_series.is_empty() {
            p #throttles { "None in the last hour." }
        } @else {
            (bars(&minute_labels, 10, &throttle_series))
            p #throttles {
                @for (service, values) in &by_service {
                    span { (service) ": " strong { (values.iter().sum::<i64>()) } } " "
                }
            }
        }
        h2 { "CreateAccount" }
        p.counts {
            span { "slots in use: " strong #slots-in-use { (in_use) } }
            span { "waiting in line for one: " strong #slots-waiting { (in_line) } }
        }
        h2 { "Rollouts" }
        @if rollouts.is_empty() {
            p { "None yet." }
        } @else {
            table {
                thead { tr { th { "started" } th { "stack" } th { "version" } th { "state" } th { "by" } } }
                tbody {
                    @for r in &rollouts {
                        tr {
                            td { (r.created_at.format("%Y-%m-%d %H:%M")) }
                            td { (r.stack) }
                            td { code { (r.version) } }
                            td class={ "state-" (r.state.as_str()) } { (r.state.as_str()) }
                            td { (r.actor) }
                        }
                    }
                }
            }
        }
    })
}

#[derive(Debug, Deserialize)]
pub struct ListFilter {
    state: Option<String>,
    tier: Option<String>,
    step: Option<String>,
    error_code: Option<String>,
    in_step_longer_than: Option<String>,
    slug: Option<String>,
    cursor: Option<String>,
}

/// `GET /ui`: the login form without a session; the tenants, with counts per state, with one.
async fn home(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(f): Query<ListFilter>,
) -> Response {
    let s = match session(&state, &headers).await {
        Ok(Some(s)) => s,
        Ok(None) => return page("Sign in", None, login_form(None)).into_response(),
        Err(e) => return server_error(e),
    };
    match tenants_page(&state, &s, f).await {
        Ok(body) => page("Tenants", Some(&s), body).into_response(),
        Err(e) => server_error(e),
    }
}

async fn tenants_page(state: &AppState, s: &Session, f: ListFilter) -> Result<Markup, sqlx::Error> {
    // A bad value is said on the page and the list is unfiltered by it, as a form should behave.
    let (list_filter, invalid) = match super::ops::list_filter(
        f.state.as_deref(),
        f.tier.as_deref(),
        f.step.as_deref(),
        f.error_code.as_deref(),
        f.in_step_longer_than.as_deref(),
    ) {
        Ok(l) => (l, None),
        Err(e) => (db::tenants::ListFilter::default(), Some(e.message)),
    };
    let filter = list_filter.state;
    // Carried into the next page's link.
    let query: String = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(
            [
                ("state", f.state.as_deref()),
                ("tier", f.tier.as_deref()),
                ("step", f.step.as_deref()),
                ("error_code", f.error_code.as_deref()),
                ("in_step_longer_than", f.in_step_longer_than.as_deref()),
            ]
            .into_iter()
            .filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| (k, v))),
        )
        .finish();
    let counts = db::tenants::count_by_state(&state.pool).await?;
    let slug = f.slug.as_deref().map(str::trim).filter(|v| !v.is_empty());
    let before = f
        .cursor
        .as_deref()
        .and_then(|c| uuid::Uuid::parse_str(c).ok());
    let (tenants, next) = match slug {
        Some(slug) => (
            db::tenants::by_slug(&state.pool, slug)
                .await?
                .into_iter()
                .collect::<Vec<_>>(),
            None,
        ),
        None => {
            let mut t = db::tenants::list(&state.pool, &list_filter, before, 51).await?;
            let next = (t.len() > 50).then(|| {
                t.truncate(50);
                t.last().map(|t| t.cursor.to_string())
            });
            (t.into_iter().map(|l| l.tenant).collect(), next.flatten())
        }
    };
    let views: Vec<TenantView> = tenants.iter().map(TenantView::from).collect();
    Ok(html! {
        h1 { "Tenants" }
        p.counts {
            @for st in TenantState::ALL {
                span { a href={ "/ui?state=" (st.as_str()) } { (st.as_str()) } ": "
                    (counts.iter().find(|(k, _)| k == st.as_str()).map_or(0, |(_, n)| *n)) }
            }
        }
        form method="get" action="/ui" {
            label { "State " select name="state" {
                option value="" { "any" }
                @for st in TenantState::ALL {
                    option value=(st.as_str()) selected[filter == Some(st)] { (st.as_str()) }
                }
            } }
            " "
            label { "Tier " select name="tier" {
                option value="" { "any" }
                @for tier in ["free", "pro", "enterprise"] {
                    option value=(tier) selected[f.tier.as_deref() == Some(tier)] { (tier) }
                }
            } }
            " "
            label { "Current step " input type="text" name="step" size="14" value=(f.step.as_deref().unwrap_or("")); }
            " "
            label { "Error code " input type="text" name="error_code" size="18" value=(f.error_code.as_deref().unwrap_or("")); }
            " "
            label { "In the step longer than " select name="in_step_longer_than" {
                option value="" { "any time" }
                @for d in ["10m", "1h", "6h", "1d", "7d"] {
                    option value=(d) selected[f.in_step_longer_than.as_deref() == Some(d)] { (d) }
                }
            } }
            " "
            label { "Slug " input type="search" name="slug" value=(slug.unwrap_or("")); }
            " "
            button { "Filter" }
        }
        @if let Some(why) = &invalid { p.state-failed { (why) } }
        @if views.is_empty() {
            p { "No tenants match." }
        } @else {
            table {
                thead { tr { th { "slug" } th { "name" } th { "tier" } th { "state" } th { "region" } th { "account" } th { "updated" } } }
                tbody {
                    @for t in &views {
                        tr {
                            td { a href={ "/ui/tenants/" (t.slug) } { (t.slug) } }
                            td { (t.name) }
                            td { (t.tier.as_str()) }
                            td class={ "state-" (t.state.as_str()) } { (t.state.as_str()) }
                            td { (t.region.as_deref().unwrap_or("")) }
                            td { (t.account_id.as_deref().unwrap_or("")) }
                            td { (t.updated_at.format("%Y-%m-%d %H:%M:%S")) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = next {
            a href={ "/ui?cursor=" (next) "&" (query) } { "Next page →" }
        }
        @if filter == Some(TenantState::Failed) && s.write {
            p { a href="/ui/retries" { "Retry failed tenants…" } " (shows how many first)" }
        }
        @if !s.write { p.why { "This token may only read: actions are hidden." } }
    })
}

#[derive(Debug, Default, Deserialize)]
pub struct RetriesForm {
    csrf: Option<String>,
    step: Option<String>,
    error_code: Option<String>,
}

impl RetriesForm {
    fn step(&self) -> Option<&str> {
        self.step
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }

    fn error_code(&self) -> Option<&str> {
        self.error_code
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty())
    }
}

/// `GET /ui/retries?step=&error_code=`: the bulk retry's dry run. Which failed tenants match, and a
/// confirmation form that retries exactly that filter.
async fn retries_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(f): Query<RetriesForm>,
) -> Response {
    let s = match session(&state, &headers).await {
        Ok(Some(s)) => s,
        Ok(None) => return Redirect::to("/ui").into_response(),
        Err(e) => return server_error(e),
    };
    let dry = match lifecycle::operator::retry_failed(
        &state.pool,
        &state.workflows,
        f.step(),
        f.error_code(),
        true,
        &s.operator,
    )
    .await
    {
        Ok(d) => d,
        Err(e) => return server_error(e),
    };
    let n = dry.matched.len();
    let body = html! {
        h1 { "Retry failed tenants" }
        form method="get" action="/ui/retries" {
            label { "Failed step " input type="text" name="step" value=(f.step().unwrap_or("")); }
            " "
            label { "Error code " input type="text" name="error_code" value=(f.error_code().unwrap_or("")); }
            " "
            button { "Count" }
        }
        p.count { (n) " failed tenant" @if n != 1 { "s" } " match" @if n as i64 >= lifecycle::operator::BULK_LIMIT { " (the first " (lifecycle::operator::BULK_LIMIT) "; retry again for more)" } "." }
        @if n > 0 {
            table {
                thead { tr { th { "slug" } th { "failed step" } th { "error code" } } }
                tbody {
                    @for t in &dry.matched {
                        tr {
                            td { a href={ "/ui/tenants/" (t.slug) } { (t.slug) } }
                            td { (t.step) }
                            td { (t.error_code.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
            @if s.write {
                form method="post" action="/ui/retries" {
                    input type="hidden" name="csrf" value=(s.csrf);
                    input type="hidden" name="step" value=(f.step().unwrap_or(""));
                    input type="hidden" name="error_code" value=(f.error_code().unwrap_or(""));
                    button { "Retry these " (n) " tenants" }
                }
            }
        }
        @if !s.write { p.why { "This token may only read: actions are hidden." } }
    };
    page("Retry failed tenants", Some(&s), body).into_response()
}

/// `POST /ui/retries`: the bulk retry itself; session, CSRF token and write scope as every action.
async fn retries_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<RetriesForm>,
) -> Response {
    let s = match acting_session(&state, &headers, form.csrf.as_deref()).await {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    let done = match lifecycle::operator::retry_failed(
        &state.pool,
        &state.workflows,
        form.step(),
        form.error_code(),
        false,
        &s.operator,
    )
    .await
    {
        Ok(d) => d,
        Err(e) => return server_error(e),
    };
    tracing::info!(matched = done.matched.len(), retried = done.retried.len(), actor = %s.operator, "console bulk retry");
    let body = html! {
        h1 { "Retried" }
        p.count { (done.retried.len()) " of " (done.matched.len()) " matching tenants retried." }
        ul { @for slug in &done.retried { li { a href={ "/ui/tenants/" (slug) } { (slug) } } } }
        p { a href="/ui?state=provisioning" { "Provisioning tenants" } " · " a href="/ui?state=failed" { "Still failed" } }
    };
    page("Retried", Some(&s), body).into_response()
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    token: String,
}

/// `POST /ui/login`: an ops token for a session cookie.
async fn login(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let Some(token) = state.ops_tokens.authenticate(form.token.trim()) else {
        return (
            StatusCode::UNAUTHORIZED,
            page(
                "Sign in",
                None,
                login_form(Some("That is not a valid ops token.")),
            ),
        )
            .into_response();
    };
    if !token.allows(Scope::Read) {
        return forbidden("This token may not read tenants.");
    }
    let id = hex(&rand::random::<[u8; 32]>());
    let csrf = hex(&rand::random::<[u8; 32]>());
    let expires = Utc::now() + chrono::Duration::hours(SESSION_HOURS);
    if let Err(e) =
        db::sessions::create(&state.pool, &digest(&id), token.digest(), &csrf, expires).await
    {
        return server_error(e);
    }
    tracing::info!(operator = %token.name, "console sign-in");
    let secure = if behind_https(&headers) {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{COOKIE}={id}; Path=/ui; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_HOURS * 3600
    );
    let mut resp = Redirect::to("/ui").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

fn behind_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, Deserialize)]
pub struct ActionForm {
    csrf: Option<String>,
    from_step: Option<String>,
    reason: Option<String>,
    event_id: Option<String>,
    endpoint: Option<String>,
}

/// `POST /ui/logout`.
async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> Response {
    let s = match session(&state, &headers).await {
        Ok(Some(s)) => s,
        Ok(None) => return forbidden("No session."),
        Err(e) => return server_error(e),
    };
    if !csrf_ok(&s, form.csrf.as_deref()) {
        return forbidden("The form's CSRF token does not match the session.");
    }
    if let Some(id) = cookie_of(&headers)
        && let Err(e) = db::sessions::delete(&state.pool, &digest(&id)).await
    {
        return server_error(e);
    }
    let mut resp = Redirect::to("/ui").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("vend_session=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    resp
}

/// The session an action runs under: it must exist, the form must carry its CSRF token, and its token
/// must have the write scope; otherwise the 403 page (or the error) to answer with.
async fn acting_session(
    state: &AppState,
    headers: &HeaderMap,
    csrf: Option<&str>,
) -> Result<Session, Response> {
    let s = match session(state, headers).await {
        Ok(Some(s)) => s,
        Ok(None) => {
            return Err(forbidden(
                "Sign in first: this action needs a console session.",
            ));
        }
        Err(e) => return Err(server_error(e)),
    };
    if !csrf_ok(&s, csrf) {
        return Err(forbidden(
            "The form's CSRF token does not match the session.",
        ));
    }
    if !s.write {
        return Err(forbidden("This token may only read."));
    }
    Ok(s)
}

fn csrf_ok(s: &Session, given: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(s.csrf.as_bytes())))
}

/// Console history entries a page.
const HISTORY_PAGE: i64 = 100;

#[derive(Debug, Default, Deserialize)]
pub struct HistoryPage {
    /// Show entries older than this one.
    history_before: Option<i64>,
}

/// `GET /ui/tenants/{slug}`: the tenant, each step with its state and attempts, why it waits, its
/// resources and history, and the actions the session may take.
async fn tenant_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(slug): Path<String>,
    Query(hp): Query<HistoryPage>,
) -> Response {
    let s = match session(&state, &headers).await {
        Ok(Some(s)) => s,
        Ok(None) => return Redirect::to("/ui").into_response(),
        Err(e) => return server_error(e),
    };
    let tenant = match db::tenants::by_slug(&state.pool, &slug).await {
        Ok(Some(t)) => t,
        Ok(None) => {
            return (
                StatusCode::NOT_FOUND,
                page(
                    "Not found",
                    Some(&s),
                    html! { h1 { "No tenant " (slug) } p { a href="/ui" { "All tenants" } } },
                ),
            )
                .into_response();
        }
        Err(e) => return server_error(e),
    };
    let detail = match super::ops::detail_of(&state, &tenant).await {
        Ok(d) => d,
        Err(e) => return server_error(e),
    };
    let page_of_history =
        db::history::newest(&state.pool, tenant.id, hp.history_before, HISTORY_PAGE + 1).await;
    // The timeline draws the latest attempts whichever page of history is shown.
    let recent = db::history::newest(&state.pool, tenant.id, None, TIMELINE_ENTRIES).await;
    let (mut history, recent) = match (page_of_history, recent) {
        (Ok(h), Ok(r)) => (h, r),
        (Err(e), _) | (_, Err(e)) => return server_error(e),
    };
    // One more than a page tells whether there are older entries.
    let older = (history.len() as i64 > HISTORY_PAGE).then(|| {
        history.truncate(HISTORY_PAGE as usize);
        history.last().map(|e| e.id)
    });
    let now = Utc::now();
    let place_in_line = match detail
        .steps
        .iter()
        .find(|st| st.wait_reason.as_deref() == Some("slot"))
    {
        Some(st) => match db::fleet::slot_place(&state.pool, st.started_at).await {
            Ok(p) => Some(p),
            Err(e) => return server_error(e),
        },
        None => None,
    };
    let deliveries = match db::outbox::list_deliveries(&state.pool, None, Some(&slug), 20).await {
        Ok(d) => d,
        Err(e) => return server_error(e),
    };
    let body = html! {
        (tenant_markup(&detail, &history, &recent, place_in_line, &deliveries, &s, now))
        p {
            @if hp.history_before.is_some() {
                a href={ "/ui/tenants/" (slug) } { "← Newest entries" } " "
            }
            @if let Some(Some(id)) = older {
                a href={ "/ui/tenants/" (slug) "?history_before=" (id) } { "Older entries →" }
            }
        }
    };
    page(&slug, Some(&s), body).into_response()
}

/// How many of the newest history entries the attempt timeline draws from.
const TIMELINE_ENTRIES: i64 = 200;

/// Each attempt in `recent` (entries that end one carry its start) as a bar in its step's lane,
/// colored by how it ended, and the attempt running now up to `now`.
fn attempt_timeline(d: &TenantDetail, recent: &[db::history::Entry], now: DateTime<Utc>) -> Markup {
    use super::charts::{Span, timeline};
    let lanes: Vec<String> = d.steps.iter().map(|s| s.name.clone()).collect();
    let lane_of = |name: &str| lanes.iter().position(|l| l == name);
    let mut spans: Vec<Span> = recent
        .iter()
        .filter_map(|e| {
            let lane = lane_of(e.step.as_deref()?)?;
            let start = e.started_at?;
            let color = match e.kind.as_str() {
                "step.succeeded" => "#16a34a",
                "step.failed" => "#b91c1c",
                "step.throttled" => "#7c3aed",
                "step.backoff" => "#ea580c",
                "step.waiting" => "#d97706",
                _ => "#6b7280",
            };
            Some(Span {
                lane,
                start,
                end: e.at.max(start),
                color,
                title: format!(
                    "{} · attempt {} · {} · {}{}",
                    e.step.as_deref().unwrap_or(""),
                    e.attempt.unwrap_or(0),
                    e.kind,
                    e.message,
                    e.detail
                        .as_ref()
                        .and_then(|d| d["error"]["aws_request_id"].as_str())
                        .map_or(String::new(), |id| format!(" · AWS request id {id}"))
                ),
            })
        })
        .collect();
    for (lane, st) in d.steps.iter().enumerate() {
        if st.state == StepState::Running {
            let since = recent
                .iter()
                .filter(|e| e.step.as_deref() == Some(st.name.as_str()))
                .map(|e| e.at)
                .max()
                .or(st.started_at)
                .unwrap_or(now);
            spans.push(Span {
                lane,
                start: since,
                end: now,
                color: "#2563eb",
                title: format!("{} · attempt {} · running", st.name, st.attempts),
            });
        }
    }
    if spans.is_empty() {
        return html! { p.why { "No attempt yet." } };
    }
    html! {
        (timeline(&lanes, &spans, now))
        p.legend {
            @for (color, what) in [("#16a34a", "succeeded"), ("#2563eb", "running"), ("#d97706", "waiting (polls)"),
                                   ("#7c3aed", "throttled"), ("#ea580c", "backoff"), ("#b91c1c", "failed"),
                                   ("#6b7280", "abandoned")] {
                span { svg width="10" height="10" { rect width="10" height="10" fill=(color) {} } " " (what) }
            }
        }
    }
}

fn tenant_markup(
    d: &TenantDetail,
    history: &[db::history::Entry],
    recent: &[db::history::Entry],
    place_in_line: Option<i64>,
    deliveries: &[db::outbox::Delivery],
    s: &Session,
    now: DateTime<Utc>,
) -> Markup {
    let t = &d.tenant;
    let moving = matches!(
        t.state,
        TenantState::Pending | TenantState::Provisioning | TenantState::Offboarding
    );
    html! {
        @if moving { noscript { meta http-equiv="refresh" content="10"; } }
        div #live data-live=(moving) {
        h1 { (t.slug) " " small class={ "state-" (t.state.as_str()) } { (t.state.as_str()) } }
        p { (t.name) " · " (t.tier.as_str()) " · region " (t.region.as_deref().unwrap_or("-"))
            " · account " (t.account_id.as_deref().unwrap_or("-"))
            @if let Some(e) = &t.endpoint { " · " a href=(e) { (e) } } }
        h2 { "Steps" }
        table {
            thead { tr { th { "step" } th { "state" } th { "attempts" } th { "throttles" } th { "started" } th { "finished" } th { "why / last error" } } }
            tbody {
                @for st in &d.steps {
                    tr {
                        td { (st.name) }
                        td class={ "state-" (st.state.as_str()) } { (st.state.as_str()) }
                        td { (st.attempts) }
                        td { (st.throttles) }
                        td { (fmt_time(st.started_at)) }
                        td { (fmt_time(st.finished_at)) }
                        td.why {
                            @if let Some(w) = why_waiting(st, now, place_in_line) { (w) br; }
                            @if let (Some(code), Some(msg)) = (&st.last_error_code, &st.last_error) {
                                code { (code) } ": " (msg)
                            }
                        }
                    }
                }
            }
        }
        h2 { "Attempts" small { " each bar an attempt; hover for how it ended" } }
        (attempt_timeline(d, recent, now))
        }
        @if s.write {
            h2 { "Actions" }
            (action_form(&t.slug, "retry", "Retry the failed or waiting step", &s.csrf, html! {}))
            (action_form(&t.slug, "requeue", "Requeue from", &s.csrf, html! {
                select name="from_step" { @for st in &d.steps { option value=(st.name) { (st.name) } } }
            }))
            @if t.state == TenantState::Offboarding {
                (action_form(&t.slug, "restore", "Restore", &s.csrf, html! {}))
            } @else if t.state != TenantState::Closed {
                (action_form(&t.slug, "offboard", "Offboard", &s.csrf, html! {
                    input type="text" name="reason" placeholder="reason" required;
                }))
            }
        }
        h2 { "Resources" }
        @let links = console_links(t.account_id.as_deref(), &d.resources);
        @if !links.is_empty() {
            ul.links { @for (what, href) in &links { li { a href=(href) rel="noreferrer" { (what) } } } }
        }
        pre { (serde_json::to_string_pretty(&d.resources).unwrap_or_default()) }
        h2 { "Event deliveries" small { " newest first" } }
        @if deliveries.is_empty() {
            p.why { "None (no endpoint is configured, or nothing was sent yet)." }
        } @else {
            table #deliveries {
                thead { tr { th { "event" } th { "endpoint" } th { "state" } th { "attempts" } th { "last answer" } th { "delivered" } @if s.write { th {} } } }
                tbody {
                    @for dl in deliveries {
                        tr {
                            td { (dl.event_type) }
                            td { (dl.endpoint_id) }
                            td class={ "state-" (dl.state) } { (dl.state) }
                            td { (dl.attempts) }
                            td { (dl.last_status.map(|c| c.to_string()).unwrap_or_default()) " " (dl.last_error.as_deref().unwrap_or("")) }
                            td { (fmt_time(dl.delivered_at)) }
                            @if s.write {
                                td {
                                    @if [DeliveryState::Delivered, DeliveryState::Failed].map(DeliveryState::as_str).contains(&dl.state.as_str()) {
                                        (action_form(&t.slug, "redeliver", "Redeliver", &s.csrf, html! {
                                            input type="hidden" name="event_id" value=(dl.event_id);
                                            input type="hidden" name="endpoint" value=(dl.endpoint_id);
                                        }))
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        h2 { "History" small { " newest first" } }
        table {
            thead { tr { th { "at" } th { "kind" } th { "step" } th { "attempt" } th { "actor" } th { "message" } } }
            tbody {
                @for e in history {
                    tr {
                        td { (e.at.format("%Y-%m-%d %H:%M:%S%.3f")) }
                        td { (e.kind) }
                        td { (e.step.as_deref().unwrap_or("")) }
                        td { (e.attempt.map(|a| a.to_string()).unwrap_or_default()) }
                        td { (e.actor.as_deref().unwrap_or("")) }
                        td { (e.message) }
                    }
                }
            }
        }
    }
}

fn action_form(slug: &str, action: &str, label: &str, csrf: &str, extra: Markup) -> Markup {
    html! {
        form.inline method="post" action={ "/ui/tenants/" (slug) "/" (action) }
            onsubmit={ "return confirm('" (label) " " (slug) "?')" } {
            input type="hidden" name="csrf" value=(csrf);
            (extra)
            " "
            button { (label) }
        }
        " "
    }
}

fn fmt_time(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// What a step waits for, in words, from its state, wait reason, error code and next attempt.
/// What the step waits for, in words. `place_in_line` is a slot-waiting step's place in the FIFO line
/// for a CreateAccount slot (1: next), when known.
pub fn why_waiting(
    st: &StepView,
    now: DateTime<Utc>,
    place_in_line: Option<i64>,
) -> Option<String> {
    let when = st.next_attempt_at.map(|at| {
        let left = (at - now).num_seconds().max(0);
        format!(
            "{} (in {})",
            at.format("%Y-%m-%d %H:%M:%S UTC"),
            human(left)
        )
    });
    let until = when.as_deref().unwrap_or("later");
    match st.state {
        StepState::Pending if st.next_attempt_at.is_some() => {
            Some("due now, waiting for a worker".into())
        }
        StepState::Running => Some("running now".into()),
        StepState::Waiting => Some(
            match (st.wait_reason.as_deref(), st.last_error_code.as_deref()) {
                (Some("slot"), _) => format!(
                    "queued for a CreateAccount slot (AWS allows 5 in flight){}; a freed slot wakes it, at the latest {until}",
                    place_in_line.map_or(String::new(), |p| format!(", {} in line", ordinal(p)))
                ),
                (_, Some("AccountCreationBudget")) => {
                    format!("the account creation budget is spent; next try {until}")
                }
                (_, Some("CloseAccountQuota")) | (_, Some("CLOSE_ACCOUNT_QUOTA_EXCEEDED")) => {
                    format!("the CloseAccount quota is spent; next try {until}")
                }
                (Some("throttle"), code) => format!(
                    "AWS throttled it ({}); it retries {until} without spending an attempt",
                    code.unwrap_or("rate limit")
                ),
                (Some("backoff"), code) => format!(
                    "backing off after an error ({}); next attempt {until}",
                    code.unwrap_or("error")
                ),
                _ if st.name == "grace_period" => format!("grace period: restorable until {until}"),
                _ => format!("waiting for AWS; looks again {until}"),
            },
        ),
        StepState::Failed => Some("failed: retry or requeue it".into()),
        _ => None,
    }
}

/// Links into the AWS console for what vend made for the tenant: its account, and each stack whose id
/// its resources hold (in the stack's own region, read from its ARN).
fn console_links(account_id: Option<&str>, resources: &serde_json::Value) -> Vec<(String, String)> {
    let mut links = Vec::new();
    if let Some(id) = account_id {
        links.push((
            format!("Account {id} in AWS Organizations"),
            format!("https://console.aws.amazon.com/organizations/v2/home/accounts/{id}"),
        ));
    }
    if let Some(map) = resources.as_object() {
        for (key, value) in map {
            let Some(arn) = value
                .as_str()
                .filter(|v| v.starts_with("arn:aws:cloudformation:"))
            else {
                continue;
            };
            let Some(region) = arn.split(':').nth(3) else {
                continue;
            };
            let stack_id: String = url::form_urlencoded::byte_serialize(arn.as_bytes()).collect();
            links.push((
                format!("Stack {key} in CloudFormation ({region})"),
                format!(
                    "https://{region}.console.aws.amazon.com/cloudformation/home?region={region}#/stacks/stackinfo?stackId={stack_id}"
                ),
            ));
        }
    }
    links
}

fn ordinal(n: i64) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

fn human(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// `POST /ui/tenants/{slug}/{retry|requeue|offboard|restore}`: needs the session, its CSRF token and
/// the write scope (403 without any of them), then goes through `lifecycle` as the API does.
async fn action(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((slug, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    let s = match acting_session(&state, &headers, form.csrf.as_deref()).await {
        Ok(s) => s,
        Err(refused) => return refused,
    };
    let who = s.operator.clone();
    let done: Result<Result<(), String>, sqlx::Error> = async {
        Ok(match action.as_str() {
            "retry" => {
                use lifecycle::operator::Retried;
                match lifecycle::operator::retry(&state.pool, &state.workflows, &slug, &who).await?
                {
                    Retried::Done { .. } => Ok(()),
                    other => Err(format!("nothing retried: {other:?}")),
                }
            }
            "requeue" => {
                use lifecycle::operator::Requeued;
                let from = form.from_step.clone().unwrap_or_default();
                match lifecycle::operator::requeue(
                    &state.pool,
                    &state.workflows,
                    &slug,
                    &from,
                    &who,
                )
                .await?
                {
                    Requeued::Done => Ok(()),
                    other => Err(format!("not requeued: {other:?}")),
                }
            }
            "offboard" => {
                use lifecycle::offboard::Offboarded;
                let reason =
                    super::views::reason(form.reason.as_deref(), "requested in the console")
                        .map_err(|e| e.to_string());
                match reason {
                    Err(e) => Err(e),
                    Ok(reason) => match lifecycle::offboard::offboard(
                        &state.pool,
                        &state.workflows,
                        &slug,
                        &reason,
                        &who,
                        state.offboard_grace,
                    )
                    .await?
                    {
                        Offboarded::Started(_) | Offboarded::Already(_) => Ok(()),
                        other => Err(format!("not offboarded: {other:?}")),
                    },
                }
            }
            "restore" => {
                use lifecycle::offboard::Restored;
                match lifecycle::offboard::restore(&state.pool, &state.workflows, &slug, &who)
                    .await?
                {
                    Restored::Done(_) => Ok(()),
                    other => Err(format!("not restored: {other:?}")),
                }
            }
            "redeliver" => {
                use lifecycle::operator::Redelivered;
                let event = form
                    .event_id
                    .as_deref()
                    .and_then(|e| uuid::Uuid::parse_str(e).ok());
                match (event, form.endpoint.as_deref()) {
                    (Some(event), Some(endpoint)) => {
                        match lifecycle::operator::redeliver(
                            &state.pool,
                            &slug,
                            event,
                            endpoint,
                            &who,
                        )
                        .await?
                        {
                            Redelivered::Done => Ok(()),
                            other => Err(format!("not redelivered: {other:?}")),
                        }
                    }
                    _ => Err("redeliver needs an event id and an endpoint".to_owned()),
                }
            }
            _ => Err(format!("unknown action {action:?}")),
        })
    }
    .await;
    match done {
        Ok(Ok(())) => {
            tracing::info!(tenant.slug = %slug, action = %action, actor = %who, "console action");
            Redirect::to(&format!("/ui/tenants/{slug}")).into_response()
        }
        Ok(Err(why)) => (
            StatusCode::CONFLICT,
            page(
                "Not done",
                Some(&s),
                html! { h1 { "Not done" } p { (why) } p { a href={ "/ui/tenants/" (slug) } { "Back to " (slug) } } },
            ),
        )
            .into_response(),
        Err(e) => server_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(
        state: StepState,
        reason: Option<&str>,
        code: Option<&str>,
        now: DateTime<Utc>,
    ) -> StepView {
        StepView {
            name: "create_account".into(),
            state,
            attempts: 1,
            throttles: 0,
            wait_reason: reason.map(str::to_owned),
            last_error: None,
            last_error_code: code.map(str::to_owned),
            next_attempt_at: Some(now + chrono::Duration::seconds(90)),
            started_at: None,
            finished_at: None,
        }
    }

    #[test]
    fn resources_link_to_the_account_and_each_stack_in_its_region() {
        let links = console_links(
            Some("123456789012"),
            &serde_json::json!({
                "tenant_stack_id": "arn:aws:cloudformation:eu-west-1:123456789012:stack/vend-acme/abc",
                "region": "eu-west-1",
            }),
        );
        assert_eq!(links.len(), 2, "{links:?}");
        assert!(links[0].1.ends_with("/accounts/123456789012"));
        assert!(
            links[1].1.starts_with("https://eu-west-1.console.aws.amazon.com/cloudformation/home?region=eu-west-1#")
                && links[1].1.ends_with("stackId=arn%3Aaws%3Acloudformation%3Aeu-west-1%3A123456789012%3Astack%2Fvend-acme%2Fabc"),
            "{links:?}"
        );
        assert!(console_links(None, &serde_json::json!({})).is_empty());
    }

    #[test]
    fn waiting_steps_say_what_they_wait_for() {
        let now = Utc::now();
        let w = |r, c| why_waiting(&step(StepState::Waiting, r, c, now), now, None).unwrap();
        assert!(w(Some("slot"), None).contains("CreateAccount slot"));
        let placed = why_waiting(
            &step(StepState::Waiting, Some("slot"), None, now),
            now,
            Some(3),
        );
        assert!(placed.unwrap().contains(", 3rd in line;"));
        assert_eq!(
            [1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111]
                .map(ordinal)
                .join(" "),
            "1st 2nd 3rd 4th 11th 12th 13th 21st 22nd 101st 111th"
        );
        assert!(w(Some("throttle"), Some("AccountCreationBudget")).contains("creation budget"));
        assert!(w(Some("throttle"), Some("CloseAccountQuota")).contains("CloseAccount quota"));
        assert!(w(Some("throttle"), Some("TooManyRequestsException")).contains("throttled"));
        assert!(w(Some("backoff"), Some("Http503")).contains("backing off"));
        assert!(w(Some("poll"), None).contains("waiting for AWS"));
        assert!(
            w(Some("poll"), None).contains("(in 90s)"),
            "{}",
            w(Some("poll"), None)
        );
        assert_eq!(
            why_waiting(&step(StepState::Succeeded, None, None, now), now, None),
            None
        );
    }
}
