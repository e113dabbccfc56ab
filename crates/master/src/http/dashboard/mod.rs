//! The dashboard at `/`: server-rendered pages on the API's listener, for
//! reading without JavaScript and live with it (htmx, vendored, and one
//! small script for the event stream).
//!
//! # Layout
//! - [`pages`] — what each page shows, gathered from the master;
//! - [`render`] — the embedded minijinja templates (auto-escaped);
//! - [`assets`] — `/static/`: htmx, the stylesheet, `live.js`;
//! - [`activity`] — the overview's last hour, read from the store (cached).
//!
//! # Invariants
//! - **Everything is escaped.** Agents supply ids, facts, paths and event
//!   data; every value reaches the page through an auto-escaped template
//!   (`render`'s tests; `tests::agent_supplied_text_is_escaped_everywhere`
//!   renders each page with hostile text), and `live.js` writes with
//!   `textContent` only.
//! - **No external request.** Every response carries [`CSP`], which lets
//!   a page load scripts, styles and images, connect and submit forms to
//!   this origin only and forbids inline script (in Chromium,
//!   `tests/e2e/dashboard.rs` checks on every page that an inline script
//!   does not run and an image from elsewhere is refused). No template or asset
//!   names another origin (`assets::tests::our_assets_reach_no_other_origin`).
//! - **Cross-site requests change nothing.** The login cookie is
//!   `HttpOnly; Secure; SameSite=Strict`, and every POST must come from
//!   this origin by its `Origin` header (or, without one, its `Referer`);
//!   anything else is refused with 403 before a handler runs
//!   ([`same_origin`], table-tested). No per-session CSRF token is needed
//!   on top of SameSite=Strict plus the Origin check.
//! - **Roles hold here as in the API.** Every page takes the API's
//!   [`Principal`]; a page lists only the agents its role sees, and key
//!   decisions need the `keys` verb on that agent, refused and audited
//!   like the API's.

pub mod activity;
pub mod assets;
pub mod pages;
pub mod render;

use axum::extract::{Form, Path, Query, Request, State};
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, LOCATION, SET_COOKIE};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use minijinja::context;
use serde::Deserialize;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::config::Verb;
use crate::http::HttpState;
use crate::http::api::{ApiError, ApiPath, ApiQuery};
use crate::http::auth::COOKIE;
use crate::server::access::Principal;

/// The Content-Security-Policy of every dashboard response: this origin
/// only, no inline script or style, no framing, forms post here only.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The events the events page lists when it loads (from the API's ring).
pub const EVENTS_LISTED: usize = 200;

/// How many audit rows the audit page lists, newest first.
pub const AUDIT_LISTED: u32 = 500;

/// Why a page could not be served.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    #[error(transparent)]
    Render(#[from] render::RenderError),
    /// The store could not be read (the jobs pages).
    #[error("cannot read the jobs store: {0}")]
    Store(#[from] crate::server::store::StoreError),
    #[error("this master keeps no jobs store")]
    NoStore,
    #[error(transparent)]
    Receipts(#[from] crate::server::receipts::ReceiptsError),
    /// The PostgreSQL store could not be read (the overview's reactions).
    #[error("cannot read the jobs store: {0}")]
    Postgres(#[from] crate::server::store::postgres::PgError),
    #[error("reading the store stopped: {0}")]
    Blocking(#[from] tokio::task::JoinError),
    /// Not there, or not for this role (the page does not say which).
    #[error("{what} not found")]
    NotFound { what: String },
    /// The role may not; audited.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    /// The API's answer (the audit log could not be read).
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl IntoResponse for DashboardError {
    fn into_response(self) -> Response {
        let status = match &self {
            DashboardError::NotFound { .. } => StatusCode::NOT_FOUND,
            DashboardError::Forbidden(_) => StatusCode::FORBIDDEN,
            DashboardError::BadRequest(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::warn!(error = %self, "Dashboard page failed.");
        }
        let title = status.canonical_reason().unwrap_or("Error");
        let body = render::render("error.html", context! { title, message => self.to_string() })
            .unwrap_or_else(|_| self.to_string());
        (status, Html(body)).into_response()
    }
}

type Page = Result<Response, DashboardError>;

/// The dashboard's routes, with [`CSP`] and the same-origin rule on all of
/// them, and the overview's last hour ([`activity`]).
pub fn router(state: &HttpState) -> Router<HttpState> {
    let store = state.master.jobs.store();
    let window = std::sync::Arc::new(activity::LastHour::new(
        store.map(|store| store.file().to_path_buf()),
        store.and_then(|store| store.postgres().cloned()),
    ));
    let header = |name: HeaderName, value: &'static str| {
        SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value))
    };
    Router::new()
        .route("/", get(overview))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/events", get(events))
        .route("/agents/{id}", get(agent))
        .route("/jobs", get(jobs))
        .route("/jobs/{jid}", get(job))
        .route("/keys", get(keys))
        .route("/keys/{decision}", post(decide_key))
        .route("/tree", get(tree))
        .route("/tree/what-if", post(what_if))
        .route("/audit", get(audit))
        .route("/fragments/overview", get(overview_fragment))
        .route("/fragments/agents/{id}/receipts", get(receipts_fragment))
        .route("/static/{name}", get(asset))
        .layer(Extension(window))
        .layer(middleware::from_fn(refuse_cross_site_posts))
        .layer(header(CONTENT_SECURITY_POLICY, CSP))
        .layer(header(HeaderName::from_static("x-content-type-options"), "nosniff"))
        .layer(header(HeaderName::from_static("x-frame-options"), "DENY"))
        .layer(header(HeaderName::from_static("referrer-policy"), "same-origin"))
}

/// Whether a state-changing request comes from this origin: its `Origin`
/// (or, when a browser sends none, its `Referer`) names the `Host` it was
/// sent to, over https. A request with neither is refused: browsers send
/// `Origin` on every POST, and the dashboard has no other clients.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(host) = text("host") else { return false };
    let origin = format!("https://{host}");
    if let Some(site) = text("sec-fetch-site")
        && site != "same-origin"
    {
        return false;
    }
    match (text("origin"), text("referer")) {
        (Some(given), _) => given == origin,
        (None, Some(referer)) => referer == origin || referer.starts_with(&format!("{origin}/")),
        (None, None) => false,
    }
}

async fn refuse_cross_site_posts(request: Request, next: Next) -> Response {
    if request.method() == axum::http::Method::POST && !same_origin(request.headers()) {
        tracing::info!(path = %request.uri().path(), "Dashboard POST from another origin refused.");
        return (StatusCode::FORBIDDEN, "refused: a dashboard form must be posted from the dashboard itself")
            .into_response();
    }
    next.run(request).await
}

/// A full page: `template` with the common context (who, which page).
fn page(template: &str, principal: Option<&Principal>, name: &str, extra: minijinja::Value) -> Page {
    let who = principal.map(|p| format!("{} ({})", p.who, p.role.name));
    let context = context! { principal => who, page => name, title => title_of(name), ..extra };
    let body = render::render(template, context)?;
    Ok(([(CACHE_CONTROL, "no-store")], Html(body)).into_response())
}

fn title_of(page: &str) -> &'static str {
    match page {
        "overview" => "Fleet",
        "events" => "Events",
        "agent" => "Agent",
        "jobs" => "Jobs",
        "job" => "Job",
        "keys" => "Keys",
        "tree" => "Tree",
        "audit" => "Audit log",
        _ => "Log in",
    }
}

/// A request without a valid token goes to the login page.
fn to_login() -> Response {
    (StatusCode::SEE_OTHER, [(LOCATION, "/login")]).into_response()
}

/// The principal, or the redirect to log in.
macro_rules! signed_in {
    ($principal:expr) => {
        match $principal {
            Ok(principal) => principal,
            Err(_) => return Ok(to_login()),
        }
    };
}

fn visible_rows(state: &HttpState, principal: &Principal) -> Vec<crate::protocol::AgentRow> {
    crate::server::control::agent_rows(&state.master)
        .into_iter()
        .filter(|row| principal.sees(&row.id, &halite_proto::Value::from_json(&row.facts)))
        .collect()
}

async fn overview_context(
    state: &HttpState,
    principal: &Principal,
    window: &activity::LastHour,
) -> Result<pages::Overview, DashboardError> {
    let summary = window.summary().await?;
    Ok(pages::overview(&visible_rows(state, principal), summary))
}

async fn overview(
    State(state): State<HttpState>,
    Extension(window): Extension<std::sync::Arc<activity::LastHour>>,
    principal: Result<Principal, ApiError>,
) -> Page {
    let principal = signed_in!(principal);
    let view = overview_context(&state, &principal, &window).await?;
    page("overview.html", Some(&principal), "overview", minijinja::Value::from_serialize(&view))
}

async fn overview_fragment(
    State(state): State<HttpState>,
    Extension(window): Extension<std::sync::Arc<activity::LastHour>>,
    principal: Result<Principal, ApiError>,
) -> Page {
    let principal = signed_in!(principal);
    let view = overview_context(&state, &principal, &window).await?;
    Ok(Html(render::render("overview_body.html", minijinja::Value::from_serialize(&view))?).into_response())
}

async fn login_page(principal: Result<Principal, ApiError>) -> Page {
    if principal.is_ok() {
        return Ok((StatusCode::SEE_OTHER, [(LOCATION, "/")]).into_response());
    }
    page("login.html", None, "login", context! {})
}

#[derive(Debug, Deserialize)]
struct LoginForm {
    token: String,
}

/// Checks the pasted token and keeps it in the cookie the API's extractor
/// reads. A wrong token is told so, and nothing is set.
async fn login(State(state): State<HttpState>, Form(form): Form<LoginForm>) -> Page {
    let token = form.token.trim();
    match state.master.access.authenticate_current(token).await {
        Ok(principal) => {
            tracing::info!(who = %principal.who, "Dashboard login.");
            // Tokens are `hlt_` and URL-safe characters: nothing to quote.
            if !token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')) {
                return Err(DashboardError::BadRequest("that is not a halite token".into()));
            }
            let cookie = format!("{COOKIE}={token}; Path=/; HttpOnly; Secure; SameSite=Strict");
            Ok((StatusCode::SEE_OTHER, [(LOCATION, "/".to_owned()), (SET_COOKIE, cookie)]).into_response())
        }
        Err(error) => {
            let mut response = page(
                "login.html",
                None,
                "login",
                context! { flash => format!("Not logged in: {error}"), flash_kind => "error" },
            )?;
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            Ok(response)
        }
    }
}

async fn logout() -> Response {
    let cookie = format!("{COOKIE}=; Path=/; HttpOnly; Secure; SameSite=Strict; Max-Age=0");
    (StatusCode::SEE_OTHER, [(LOCATION, "/login".to_owned()), (SET_COOKIE, cookie)]).into_response()
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    #[serde(default)]
    tag: String,
}

async fn events(
    State(state): State<HttpState>,
    Query(query): Query<EventsQuery>,
    principal: Result<Principal, ApiError>,
) -> Page {
    let principal = signed_in!(principal);
    let tag = query.tag.trim().to_owned();
    let matcher = if tag.is_empty() {
        None
    } else {
        Some(
            globset::Glob::new(&tag)
                .map_err(|e| DashboardError::BadRequest(format!("tag filter `{tag}`: {}", e.kind())))?
                .compile_matcher(),
        )
    };
    let recent: Vec<_> = state.ring.recent(EVENTS_LISTED).into_iter().map(|n| n.event).collect();
    let facts: std::collections::HashMap<String, halite_proto::Value> =
        crate::server::control::agent_rows(&state.master)
            .into_iter()
            .map(|row| (row.id, halite_proto::Value::from_json(&row.facts)))
            .collect();
    let null = halite_proto::Value::Null;
    let visible = |event: &halite_proto::Event| {
        event.agent.is_empty() || principal.sees(&event.agent, facts.get(&event.agent).unwrap_or(&null))
    };
    let events = pages::events(&recent, matcher.as_ref(), visible);
    page("events.html", Some(&principal), "events", context! { tag, events })
}

/// The agent `id`'s row, if the principal sees it.
fn agent_row(state: &HttpState, principal: &Principal, id: &str) -> Result<crate::protocol::AgentRow, DashboardError> {
    visible_rows(state, principal)
        .into_iter()
        .find(|row| row.id == id)
        .ok_or_else(|| DashboardError::NotFound { what: format!("agent {id}") })
}

/// The receipts section's context: `agent`'s receipts from the store.
async fn receipts_context(state: &HttpState, agent: &str) -> Result<minijinja::Value, DashboardError> {
    let Some(store) = state.master.jobs.store() else {
        return Ok(context! {});
    };
    let (path, postgres) = (store.file().to_path_buf(), store.postgres().cloned());
    let agent = agent.to_owned();
    let (receipts, drift_counts) =
        tokio::task::spawn_blocking(move || pages::receipts(&path, postgres.as_ref(), &agent)).await??;
    Ok(context! { receipts, drift_counts })
}

async fn agent(State(state): State<HttpState>, Path(id): Path<String>, principal: Result<Principal, ApiError>) -> Page {
    let principal = signed_in!(principal);
    let row = agent_row(&state, &principal, &id)?;
    let facts_value = halite_proto::Value::from_json(&row.facts);
    let managed = pages::managed_files(&state.master, &id, &facts_value);
    let facts = pages::facts(&row.facts);
    let jobs = match state.master.jobs.store().map(|s| s.file().to_path_buf()) {
        Some(path) => {
            let agent = id.clone();
            tokio::task::spawn_blocking(move || pages::jobs(&path, Some(&agent))).await??
        }
        None => Vec::new(),
    };
    let view = pages::AgentView::of(&row);
    page(
        "agent.html",
        Some(&principal),
        "agent",
        context! { agent => view, managed, facts, jobs, ..receipts_context(&state, &id).await? },
    )
}

async fn receipts_fragment(
    State(state): State<HttpState>,
    Path(id): Path<String>,
    principal: Result<Principal, ApiError>,
) -> Page {
    let principal = signed_in!(principal);
    agent_row(&state, &principal, &id)?;
    Ok(Html(render::render("receipts.html", receipts_context(&state, &id).await?)?).into_response())
}

fn store_path(state: &HttpState) -> Result<std::path::PathBuf, DashboardError> {
    state.master.jobs.store().map(|s| s.file().to_path_buf()).ok_or(DashboardError::NoStore)
}

async fn jobs(State(state): State<HttpState>, principal: Result<Principal, ApiError>) -> Page {
    let principal = signed_in!(principal);
    let path = store_path(&state)?;
    let listed = tokio::task::spawn_blocking(move || pages::jobs(&path, None)).await??;
    // A job shows when the role sees every agent it was sent to (`admin`:
    // all, the master's own hook runs too).
    let seen: std::collections::HashSet<String> =
        visible_rows(&state, &principal).into_iter().map(|row| row.id).collect();
    let admin = principal.can(Verb::Admin).is_ok();
    let jobs: Vec<_> = listed.into_iter().filter(|job| admin || job.agents.iter().all(|a| seen.contains(a))).collect();
    page("jobs.html", Some(&principal), "jobs", context! { jobs })
}

async fn job(State(state): State<HttpState>, Path(jid): Path<String>, principal: Result<Principal, ApiError>) -> Page {
    let principal = signed_in!(principal);
    let path = store_path(&state)?;
    let wanted = jid.clone();
    let found = tokio::task::spawn_blocking(move || pages::job(&path, &wanted)).await??;
    let not_found = || DashboardError::NotFound { what: format!("job {jid}") };
    let mut found = found.ok_or_else(not_found)?;
    let seen: std::collections::HashSet<String> =
        visible_rows(&state, &principal).into_iter().map(|row| row.id).collect();
    found.agents.retain(|a| seen.contains(&a.agent));
    if found.agents.is_empty() && principal.can(Verb::Admin).is_err() {
        return Err(not_found());
    }
    page("job.html", Some(&principal), "job", minijinja::Value::from_serialize(&found))
}

async fn keys(State(state): State<HttpState>, principal: Result<Principal, ApiError>) -> Page {
    let principal = signed_in!(principal);
    keys_page(&state, &principal, None)
}

fn keys_page(state: &HttpState, principal: &Principal, flash: Option<(String, &str)>) -> Page {
    let null = halite_proto::Value::Null;
    let entries: Vec<_> =
        state.master.keys.list().into_iter().filter(|e| principal.role.reaches(&e.id, &null)).collect();
    let keys = pages::keys(&entries);
    let can_manage = principal.can(Verb::Keys).is_ok();
    let (flash, flash_kind) = flash.map_or((None, ""), |(text, kind)| (Some(text), kind));
    page("keys.html", Some(principal), "keys", context! { keys, can_manage, flash, flash_kind })
}

#[derive(Debug, Deserialize)]
struct KeyForm {
    id: String,
    fingerprint: String,
}

/// Accepts or rejects the one key the form names by its fingerprint,
/// through the API's own handlers: the same role check (the `keys` verb
/// on that agent), the control socket's rules and commit, and the audit
/// row, for a change and for a refusal alike.
async fn decide_key(
    State(state): State<HttpState>,
    Path(decision): Path<String>,
    principal: Result<Principal, ApiError>,
    Form(form): Form<KeyForm>,
) -> Page {
    let principal = signed_in!(principal);
    let fingerprint = form.fingerprint.trim().to_owned();
    // A fingerprint names one key; it must be the one the page showed.
    let named = state.master.keys.matching(&fingerprint).map_err(|e| DashboardError::BadRequest(e.to_string()))?;
    if named.len() != 1 || named[0].id != form.id {
        return Err(DashboardError::BadRequest(format!("agent {} has no key {fingerprint}", form.id)));
    }
    let done = match decision.as_str() {
        "accept" => {
            let query = crate::http::api::keys::AcceptQuery { replace: false };
            crate::http::api::keys::accept(
                State(state.clone()),
                principal.clone(),
                ApiPath(fingerprint.clone()),
                ApiQuery(query),
            )
            .await
        }
        "reject" => {
            crate::http::api::keys::reject(State(state.clone()), principal.clone(), ApiPath(fingerprint.clone())).await
        }
        other => return Err(DashboardError::NotFound { what: format!("key decision {other}") }),
    };
    let flash = match done {
        Ok(_) => (format!("{}: key {decision}ed ({fingerprint}).", form.id), "ok"),
        Err(ApiError::Forbidden(refusal)) => return Err(DashboardError::Forbidden(refusal)),
        Err(error) => (format!("Not done: {error}"), "error"),
    };
    keys_page(&state, &principal, Some(flash))
}

async fn tree(State(state): State<HttpState>, principal: Result<Principal, ApiError>) -> Page {
    let principal = signed_in!(principal);
    let view = pages::tree(&state.master);
    let what_if = context! { tag => "", agent => "", data => "{}", result => "" };
    page("tree.html", Some(&principal), "tree", context! { what_if, ..minijinja::Value::from_serialize(&view) })
}

#[derive(Debug, Deserialize)]
struct WhatIfForm {
    tag: String,
    #[serde(default)]
    agent: String,
    #[serde(default)]
    data: String,
}

/// Which reactors an event would fire on the live tree; acts on nothing.
async fn what_if(
    State(state): State<HttpState>,
    principal: Result<Principal, ApiError>,
    Form(form): Form<WhatIfForm>,
) -> Page {
    let principal = signed_in!(principal);
    let data_text = if form.data.trim().is_empty() { "{}".to_owned() } else { form.data.clone() };
    let result = match serde_json::from_str::<serde_json::Value>(&data_text) {
        Err(error) => format!("the data is not JSON: {error}"),
        Ok(data) => {
            let tree = state.master.tree();
            let agent = (!form.agent.trim().is_empty()).then(|| form.agent.trim());
            let mut out = Vec::new();
            match crate::cli::check::what_if_in(&tree, form.tag.trim(), agent, &data, &mut out) {
                Ok(_) => String::from_utf8_lossy(&out).into_owned(),
                Err(error) => format!("cannot check: {error}"),
            }
        }
    };
    let view = pages::tree(&state.master);
    let what_if = context! { tag => form.tag, agent => form.agent, data => data_text, result };
    page("tree.html", Some(&principal), "tree", context! { what_if, ..minijinja::Value::from_serialize(&view) })
}

async fn audit(State(state): State<HttpState>, principal: Result<Principal, ApiError>) -> Page {
    let principal = signed_in!(principal);
    if let Err(refusal) = principal.can(Verb::Admin) {
        return Err(DashboardError::Forbidden(format!("the audit log needs the admin verb: {refusal}")));
    }
    let rows = state.master.access.audit(AUDIT_LISTED).await.map_err(|e| ApiError::Internal(e.to_string()))?;
    let rows: Vec<_> = rows
        .iter()
        .rev()
        .map(|row| {
            context! {
                seq => row.seq, time => pages::time(row.at_us), who => row.entry.who, what => row.entry.what,
                target => row.entry.target, result => row.entry.result,
            }
        })
        .collect();
    page("audit.html", Some(&principal), "audit", context! { rows })
}

async fn asset(Path(name): Path<String>) -> Response {
    match assets::find(&name) {
        Some(asset) => {
            ([(CONTENT_TYPE, asset.content_type), (CACHE_CONTROL, "public, max-age=300")], asset.bytes).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such file").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn only_same_origin_posts_pass() {
        let host = ("host", "127.0.0.1:8443");
        let cases: &[(&[(&str, &str)], bool)] = &[
            (&[host, ("origin", "https://127.0.0.1:8443")], true),
            (&[host, ("referer", "https://127.0.0.1:8443/keys")], true),
            (&[host, ("origin", "https://127.0.0.1:8443"), ("sec-fetch-site", "same-origin")], true),
            (&[host, ("origin", "https://evil.example")], false),
            (&[host, ("origin", "http://127.0.0.1:8443")], false),
            (&[host, ("origin", "null")], false),
            (&[host, ("referer", "https://127.0.0.1:8443.evil.example/")], false),
            (&[host, ("origin", "https://127.0.0.1:8443"), ("sec-fetch-site", "cross-site")], false),
            (&[host], false),
            (&[("origin", "https://127.0.0.1:8443")], false),
        ];
        for (pairs, wanted) in cases {
            let pairs: Vec<(&'static str, &'static str)> = pairs.iter().map(|(n, v)| (leak(n), leak(v))).collect();
            assert_eq!(same_origin(&headers(&pairs)), *wanted, "{pairs:?}");
        }
    }

    fn leak(text: &str) -> &'static str {
        Box::leak(text.to_owned().into_boxed_str())
    }

    /// Every page, rendered with strings an agent could send, shows them
    /// as text: no tag, attribute or script of theirs survives.
    #[test]
    fn agent_supplied_text_is_escaped_everywhere() {
        let evil = "<script>alert(1)</script>\"' onmouseover=x";
        let row = crate::protocol::AgentRow {
            key: "accepted".into(),
            version: Some(evil.into()),
            facts: serde_json::json!({ "os": evil }),
            address: Some(evil.into()),
            compliance: crate::protocol::Compliance::Drifted { since_us: 1, path: Some(evil.into()) },
            connected: true,
            ..crate::protocol::AgentRow::unknown(evil)
        };
        let overview = pages::overview(std::slice::from_ref(&row), activity::Summary::default());
        let receipt = crate::server::receipts::Receipt {
            jid: evil.into(),
            agent: evil.into(),
            state: evil.into(),
            path: evil.into(),
            kind: crate::server::receipts::ReceiptKind::Corrective,
            cause: evil.into(),
            cause_event: Some(evil.into()),
            hash_before: Some(evil.into()),
            hash_after: Some(evil.into()),
            latency_us: Some(1),
            at_us: 0,
        };
        let receipts = pages::receipt_views(&[receipt]);
        let drift_counts = vec![pages::DriftCount { path: evil.into(), count: 1 }];
        let event =
            std::sync::Arc::new(halite_proto::Event::new(evil, evil, halite_proto::Value::map().with("path", evil)));
        let events = pages::events(&[event], None, |_| true);
        let key = crate::server::keys::KeyEntry {
            id: evil.into(),
            key: evil.into(),
            status: crate::server::keys::KeyStatus::Pending,
            since: 0,
        };
        let job = context! {
            job => context! { jid => evil, time => evil, cause => evil, target => evil, test => false },
            agents => vec![context! { agent => evil, error => evil, states => vec![context! {
                id => evil, kind => evil, outcome => "changed", duration => evil, error => evil, changes => evil,
                diff => pages::diff_lines(&format!("+{evil}\n-{evil}")),
            }]}],
        };
        let base = |extra: minijinja::Value| {
            context! { principal => evil, page => "x", title => evil, flash => evil, flash_kind => evil, ..extra }
        };
        let rendered = [
            ("overview.html", base(minijinja::Value::from_serialize(&overview))),
            ("events.html", base(context! { tag => evil, events })),
            (
                "agent.html",
                base(context! {
                    agent => pages::AgentView::of(&row), receipts, drift_counts,
                    managed => vec![pages::ManagedFile { path: evil.into(), state: evil.into(), kind: evil.into(), watched: true }],
                    facts => pages::facts(&row.facts),
                    jobs => vec![context! { jid => evil, jid_short => evil, time => evil, cause => evil, target => evil, states => evil }],
                }),
            ),
            ("job.html", base(job)),
            ("keys.html", base(context! { keys => pages::keys(&[key]), can_manage => true })),
            (
                "tree.html",
                base(context! {
                    summary => evil,
                    what_if => context! { tag => evil, agent => evil, data => evil, result => evil },
                    reactors => vec![pages::ReactorView { name: evil.into(), on: evil.into(), when: Some(evil.into()), target: Some(evil.into()), actions: vec![evil.into()] }],
                    beacons => vec![pages::BeaconView { name: evil.into(), kind: evil.into(), config: evil.into() }],
                }),
            ),
            (
                "audit.html",
                base(
                    context! { rows => vec![context! { seq => 1, time => evil, who => evil, what => evil, target => evil, result => evil }] },
                ),
            ),
            ("login.html", base(context! {})),
            ("error.html", base(context! { message => evil })),
        ];
        for (template, context) in rendered {
            let html = render::render(template, context).unwrap_or_else(|e| panic!("{e}"));
            assert!(!html.contains("<script>alert"), "{template}: a script tag got through");
            assert!(
                !html.contains("\" onmouseover") && !html.contains("' onmouseover"),
                "{template}: an attribute got through"
            );
            assert!(html.contains("&lt;script&gt;alert(1)&lt;"), "{template}: the hostile text is not shown at all");
        }
    }
}
