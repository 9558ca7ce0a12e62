//! Errors as the API answers them: a status, a code, a message.

use anyhow::Result;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use tracing::warn;

/// A query, form or path the extractor could not read: a JSON 400 like
/// every other error.
pub(crate) fn rejected(what: &str, rejection: impl std::fmt::Display) -> AppError {
    AppError::BadRequest(format!("bad {what}: {rejection}"))
}

/// An error a client can act on; internals are logged, not sent.
#[derive(Debug)]
pub enum AppError {
    BadRequest(String),
    Unauthorized,
    /// A push webhook whose signature is missing or wrong (401).
    Unsigned(String),
    Forbidden(String),
    /// A GET where only POST changes something (or the other way round).
    MethodNotAllowed,
    /// Too many failed logins from this address; retry after this long.
    TooMany(std::time::Duration),
    NotFound(String),
    Conflict(String),
    Unavailable(String),
    Internal(anyhow::Error),
}

impl AppError {
    pub(crate) fn message(&self) -> String {
        match self {
            AppError::BadRequest(m)
            | AppError::NotFound(m)
            | AppError::Conflict(m)
            | AppError::Unavailable(m) => m.clone(),
            AppError::Unauthorized => {
                "log in as an operator first, or send an operator's token (Authorization: Bearer …)"
                    .into()
            }
            AppError::Unsigned(m) => m.clone(),
            AppError::Forbidden(m) => m.clone(),
            AppError::MethodNotAllowed => {
                "method not allowed: reading is GET, every change is POST".into()
            }
            AppError::TooMany(wait) => format!(
                "too many failed logins from this address: try again in {} s",
                wait.as_secs().max(1)
            ),
            AppError::Internal(_) => "internal error".into(),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match &self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized | AppError::Unsigned(_) => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            AppError::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Internal(error) => {
                warn!(error = format!("{error:#}"), "request failed");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        if status == StatusCode::UNAUTHORIZED {
            metrics::counter!("homelab_http_unauthorized_total").increment(1);
        }
        let mut response = (status, Json(json!({"error": self.message()}))).into_response();
        if let AppError::TooMany(wait) = &self {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                header::HeaderValue::from(wait.as_secs().max(1)),
            );
        }
        response
    }
}

impl From<anyhow::Error> for AppError {
    fn from(error: anyhow::Error) -> Self {
        AppError::Internal(error)
    }
}

/// A JSON answer from a borrowed value (the cached world is shared, not
/// copied).
pub(crate) fn json_of<T: serde::Serialize + ?Sized>(value: &T) -> Result<Response, AppError> {
    let body = serde_json::to_vec(value).map_err(|e| AppError::Internal(e.into()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}
