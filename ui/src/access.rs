//! Who may do what: the operator of a request, the checks before a change, the audit log, logging in and out.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use axum::extract::rejection::FormRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use serde::Deserialize;
use tracing::{info, warn};

use crate::errors::rejected;
use crate::errors::AppError;
use crate::AppState;
use crate::{auth, websec};

/// Every answer carries the security headers; a POST a browser marks as
/// cross-site (or from another origin) is refused before any handler.
pub(crate) async fn guard(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unrouted".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let refused = (request.method() == axum::http::Method::POST)
        .then(|| websec::cross_site(request.headers()))
        .flatten();
    let mut response = match refused {
        Some(why) => {
            metrics::counter!("homelab_http_cross_site_refused_total").increment(1);
            AppError::Forbidden(format!("{why}: refused")).into_response()
        }
        None => next.run(request).await,
    };
    for (name, value) in websec::security_headers() {
        response.headers_mut().insert(name, value);
    }
    // A stream's duration is its whole life: not a latency.
    if route != "/api/stream" {
        metrics::histogram!("homelab_http_request_duration_seconds", "method" => method, "route" => route)
            .record(started.elapsed().as_secs_f64());
    }
    response
}

/// The client's address, for the login limit (`None` without a socket,
/// as in tests that call the router directly).
pub(crate) type Client = Option<axum::Extension<ConnectInfo<SocketAddr>>>;

pub(crate) fn client_ip(client: &Client) -> std::net::IpAddr {
    client
        .as_ref()
        .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0 .0.ip())
}

/// The operator the request is from (its bearer token or the session
/// cookie the login set), if any ([`auth::who`]).
pub(crate) fn operator(state: &AppState, headers: &HeaderMap) -> Option<String> {
    auth::who(&state.layout, &state.token, headers)
}

/// [`operator`], under the login limit: a wrong token or cookie counts as a
/// failed login of the client's address. The operator's name.
pub(crate) fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    client: &Client,
) -> Result<String, AppError> {
    let ip = client_ip(client);
    let now = std::time::Instant::now();
    let mut limiter = state.limiter.lock().expect("limiter lock");
    if let Err(wait) = limiter.check(ip, now) {
        metrics::counter!("homelab_http_logins_limited_total").increment(1);
        return Err(AppError::TooMany(wait));
    }
    if let Some(name) = operator(state, headers) {
        return Ok(name);
    }
    let presented = auth::bearer(headers).is_some()
        || websec::cookie(headers, websec::SESSION_COOKIE).is_some();
    if presented {
        limiter.fail(ip, now);
        drop(limiter);
        metrics::counter!("homelab_http_login_failures_total").increment(1);
        warn!(client = %ip, "wrong operator token or session");
        // Who it claims to be, where it says so: a removed operator's
        // open page, or someone trying tokens.
        let claimed = auth::bearer(headers)
            .and_then(|t| homelab_core::operator::parse_token(&t).map(|(n, _)| n))
            .or_else(|| {
                websec::cookie(headers, websec::SESSION_COOKIE)
                    .and_then(homelab_core::operator::session_name)
            })
            .map_or_else(|| "?".to_string(), |n| n.to_string());
        audit(
            state,
            homelab_core::audit::Entry::new(
                &claimed,
                homelab_core::audit::What::Login,
                "session",
                false,
                Utc::now(),
            )
            .client(ip)
            .detail("a token or session that is not (or no longer) valid"),
        );
    }
    Err(AppError::Unauthorized)
}

/// Appends to the audit trail; a trail that cannot be written is logged
/// and counted (the decision it records has happened).
pub(crate) fn audit(state: &AppState, entry: homelab_core::audit::Entry) {
    if let Err(error) = homelab_core::audit::append(&state.layout, &entry) {
        metrics::counter!("homelab_audit_write_errors_total").increment(1);
        warn!(error = format!("{error:#}"), "audit entry not written");
    }
}

#[derive(Deserialize)]
pub(crate) struct LoginForm {
    /// The operator's name; `admin` (the default) with the operator token.
    #[serde(default)]
    name: String,
    #[serde(default)]
    password: String,
    /// The form of earlier releases: the operator token alone.
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
}

pub(crate) fn csrf_refused() -> AppError {
    metrics::counter!("homelab_http_csrf_refused_total").increment(1);
    AppError::Forbidden(
        "the form's CSRF value does not match: reload the page and try again".into(),
    )
}

/// The login form: the session cookie for an operator's name and password
/// (or the operator token as `admin`); a wrong one counts against the
/// address ([`websec::Limiter`]). Each try goes to the audit trail.
pub(crate) async fn login(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    form: Result<axum::Form<LoginForm>, FormRejection>,
) -> Result<Response, AppError> {
    use homelab_core::audit::{Entry, What};
    let axum::Form(form) = form.map_err(|e| rejected("form", e))?;
    if !websec::csrf_ok(&headers, &form.csrf) {
        return Err(csrf_refused());
    }
    let ip = client_ip(&client);
    let now = std::time::Instant::now();
    if let Err(wait) = state.limiter.lock().expect("limiter lock").check(ip, now) {
        metrics::counter!("homelab_http_logins_limited_total").increment(1);
        return Err(AppError::TooMany(wait));
    }
    let (name, password) = if form.password.is_empty() && !form.token.is_empty() {
        (homelab_core::operator::ADMIN.to_string(), form.token)
    } else {
        let name = form.name.trim().to_ascii_lowercase();
        let name = if name.is_empty() {
            homelab_core::operator::ADMIN.into()
        } else {
            name
        };
        (name, form.password)
    };
    let password = password.trim().to_string();
    if password.is_empty() {
        return Err(AppError::BadRequest(
            "the password is empty: an operator's password, or the operator token as admin".into(),
        ));
    }
    let (layout, token, tried) = (state.layout.clone(), state.token.clone(), name.clone());
    let session =
        tokio::task::spawn_blocking(move || auth::login(&layout, &token, &tried, &password))
            .await
            .context("login task")?;
    let Some(session) = session else {
        state.limiter.lock().expect("limiter lock").fail(ip, now);
        metrics::counter!("homelab_http_login_failures_total").increment(1);
        warn!(client = %ip, operator = %homelab_core::audit::clean(&name, 64), "failed login");
        audit(
            &state,
            Entry::new(&name, What::Login, "page", false, Utc::now())
                .client(ip)
                .detail("wrong name or password"),
        );
        return Err(AppError::Unauthorized);
    };
    info!(client = %ip, operator = %name, "operator logged in");
    audit(
        &state,
        Entry::new(&name, What::Login, "page", true, Utc::now()).client(ip),
    );
    let cookie = websec::set_cookie(
        websec::SESSION_COOKIE,
        &session,
        2_592_000,
        websec::over_tls(&headers),
    );
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response())
}

#[derive(Deserialize)]
pub(crate) struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

/// Ends this browser's session (the cookie is removed).
pub(crate) async fn logout(
    State(state): State<AppState>,
    client: Client,
    headers: HeaderMap,
    form: Result<axum::Form<LogoutForm>, FormRejection>,
) -> Result<Response, AppError> {
    use homelab_core::audit::{Entry, What};
    let axum::Form(form) = form.map_err(|e| rejected("form", e))?;
    if !websec::csrf_ok(&headers, &form.csrf) {
        return Err(csrf_refused());
    }
    if let Some(name) = operator(&state, &headers) {
        audit(
            &state,
            Entry::new(&name, What::Logout, "page", true, Utc::now()).client(client_ip(&client)),
        );
    }
    let cookie = websec::set_cookie(websec::SESSION_COOKIE, "", 0, websec::over_tls(&headers));
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response())
}
