//! The HTTP JSON API under `/api/v1/` for phone-number accounts (issue 4):
//! sign-up with an SMS code (`register`), device credentials and linking
//! (`devices`), contact discovery (`discover`). Documented in `openapi.json`
//! (this directory), served at `/api/v1/openapi.json`.
//!
//! Every error is JSON `{"error": "<stable code>", "message": "<text>"}` with a
//! fitting status (400, 401, 404, 409, 413, 429 with `Retry-After`, 502).
//! Authenticated routes take `Authorization: Bearer <device credential>`.

mod codes;
pub(crate) mod devices;
mod discover;
mod email;
mod groups;
pub(crate) mod phone;
mod profile;
mod register;
pub(crate) mod sms;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use serde::de::DeserializeOwned;

use crate::Server;
use crate::limiter::RateLimiter;

/// The OpenAPI 3 description of this API, kept in the repository.
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

/// The API's shared state: rate limiters (per node) and the SMS HTTP client.
pub(crate) struct ApiState {
    codes_per_ip: RateLimiter<IpAddr>,
    codes_per_number: RateLimiter<String>,
    links_per_ip: RateLimiter<IpAddr>,
    pub(crate) sms_http: reqwest::Client,
}

impl ApiState {
    pub(crate) fn new(config: &crate::Config) -> anyhow::Result<Self> {
        Ok(ApiState {
            codes_per_ip: RateLimiter::new(config.phone.codes_per_ip_per_hour, 3600),
            codes_per_number: RateLimiter::new(config.phone.codes_per_number_per_hour, 3600),
            links_per_ip: RateLimiter::new(config.phone.codes_per_ip_per_hour, 3600),
            sms_http: sms::client(config.sms.timeout_secs)?,
        })
    }
}

/// The API routes (empty when `[phone] enabled = false`, except the spec).
pub(crate) fn router(server: Arc<Server>) -> Router {
    let limit = server.config.phone.max_body_bytes;
    let mut api = Router::new()
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/register/methods", get(register::methods));
    // Refused with 403 when `email` is not an allowed sign-up method.
    api = api
        .route("/api/v1/register/email/start", post(email::start))
        .route("/api/v1/register/email/verify", post(email::verify));
    // An avatar may be larger than other bodies; its own check answers 413.
    let avatar_limit = DefaultBodyLimit::max(server.config.pep.max_avatar_bytes.saturating_add(1));
    if server.config.phone.enabled {
        api = api
            .route("/api/v1/register/start", post(register::start))
            .route("/api/v1/register/verify", post(register::verify))
            .route("/api/v1/devices", get(devices::list))
            .route("/api/v1/devices/{id}", delete(devices::revoke))
            .route("/api/v1/link/start", post(devices::link_start))
            .route("/api/v1/link/approve", post(devices::link_approve))
            .route("/api/v1/link/poll", post(devices::link_poll))
            .route("/api/v1/contacts/discover", post(discover::discover))
            .route(
                "/api/v1/privacy",
                get(profile::get_privacy).put(profile::put_privacy),
            )
            .route(
                "/api/v1/profile",
                get(profile::get_profile).put(profile::put_profile),
            )
            .route(
                "/api/v1/profile/avatar",
                put(profile::put_avatar).layer(avatar_limit),
            )
            .route(
                "/api/v1/users/{jid}/profile",
                get(profile::get_user_profile),
            )
            .route("/api/v1/users/{jid}/avatar", get(profile::get_user_avatar))
            .route("/api/v1/account", delete(profile::delete_account));
    }
    if server.config.muc.enabled {
        api = api
            .route("/api/v1/groups", post(groups::create))
            .route(
                "/api/v1/groups/{jid}/invite-links",
                post(groups::create_link),
            )
            .route(
                "/api/v1/groups/{jid}/invite-links/{token}",
                delete(groups::revoke_link),
            )
            .route(
                "/api/v1/groups/{jid}/invite-links/{token}/qr",
                get(groups::link_qr),
            )
            .route(
                "/api/v1/join/{token}",
                get(groups::join_preview).post(groups::join),
            )
            .merge(groups::page_router());
    }
    // Unknown API paths get a JSON 404; everything else outside the API falls
    // through to the web client (`http.rs` sets the one fallback).
    api.route("/api/v1/{*rest}", axum::routing::any(not_found))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(server)
}

async fn openapi() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        OPENAPI,
    )
        .into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no_such_endpoint",
        "no such API endpoint",
    )
}

/// An API error: status, stable code, human text, and a wait for 429s.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<Duration>,
    extra: Option<(&'static str, serde_json::Value)>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            extra: None,
        }
    }

    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(crate) fn too_many(code: &'static str, message: &str, wait: Duration) -> Self {
        ApiError {
            retry_after: Some(wait),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, message)
        }
    }

    pub(crate) fn not_found(code: &'static str, message: &str) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, code, message)
    }

    pub(crate) fn with(mut self, key: &'static str, value: serde_json::Value) -> Self {
        self.extra = Some((key, value));
        self
    }

    pub(crate) fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "API request failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal server error",
        )
    }
}

impl From<kith_store::StoreError> for ApiError {
    fn from(error: kith_store::StoreError) -> Self {
        ApiError::internal(error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.code, "message": self.message });
        if let (Some((key, value)), Some(map)) = (self.extra, body.as_object_mut()) {
            map.insert(key.to_owned(), value);
        }
        let mut response = (self.status, json_headers(), body.to_string()).into_response();
        if let Some(wait) = self.retry_after {
            // RFC 9110 §10.2.3: delay-seconds, rounded up so a client never retries early.
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            if let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"kith\""),
            );
        }
        response
    }
}

fn json_headers() -> [(header::HeaderName, &'static str); 2] {
    [
        (header::CONTENT_TYPE, "application/json"),
        (header::CACHE_CONTROL, "no-store"),
    ]
}

/// A JSON response with status `status`.
pub(crate) fn json(status: StatusCode, value: serde_json::Value) -> Response {
    (status, json_headers(), value.to_string()).into_response()
}

/// A JSON request body; malformed JSON, a wrong shape or an oversized body get
/// an API error instead of axum's plain-text rejections.
pub(crate) struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        "the request body is too large",
                    )
                } else {
                    ApiError::bad_request("invalid_body", rejection.body_text())
                }
            })?;
        serde_json::from_slice(&bytes)
            .map(ApiJson)
            .map_err(|error| ApiError::bad_request("invalid_json", error.to_string()))
    }
}

/// The device a request is authenticated as (`Authorization: Bearer`).
pub(crate) struct Device {
    pub owner: String,
    pub id: String,
}

impl FromRequestParts<Arc<Server>> for Device {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        server: &Arc<Server>,
    ) -> Result<Self, Self::Rejection> {
        let unauthorized = || {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid device credential is required (Authorization: Bearer …)",
            )
        };
        let credential = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(unauthorized)?;
        let id = crate::credentials::parse_id(credential).ok_or_else(unauthorized)?;
        let row = server
            .store
            .device_credential(id)
            .await?
            .ok_or_else(unauthorized)?;
        if !crate::credentials::matches(&row, credential) {
            return Err(unauthorized());
        }
        Ok(Device {
            owner: row.owner,
            id: row.id,
        })
    }
}

/// The client's IP address.
pub(crate) fn peer_ip(parts: &axum::extract::ConnectInfo<crate::http::PeerAddr>) -> IpAddr {
    parts.0.0.ip()
}

/// The bare JID of an account.
pub(crate) fn jid_of(server: &Server, username: &str) -> String {
    format!("{username}@{}", server.domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec in the repository is valid JSON, OpenAPI 3, and names every route
    /// `router` serves (kept in step by hand; this catches a missing one).
    #[test]
    fn openapi_lists_every_route() {
        let spec: serde_json::Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        assert!(
            spec["openapi"]
                .as_str()
                .is_some_and(|v| v.starts_with("3."))
        );
        // The source with each line trimmed and joined, so a `.route(` call that
        // rustfmt split over lines reads as one.
        let source: String = include_str!("mod.rs").lines().map(str::trim).collect();
        let routes: Vec<(&str, &str)> = source
            .split(".route(\"")
            .skip(1)
            .filter_map(|rest| {
                let (path, rest) = rest.split_once('"')?;
                let method = rest.trim_start_matches(',').trim().split('(').next()?;
                Some((path, method))
            })
            .filter(|(path, _)| !path.contains("{*"))
            .collect();
        assert!(routes.len() >= 8, "{routes:?}");
        for (path, method) in routes {
            let path = path.strip_prefix("/api/v1").expect("under /api/v1");
            assert!(
                spec["paths"][path][method].is_object(),
                "{method} {path} missing from openapi.json"
            );
        }
    }
}
