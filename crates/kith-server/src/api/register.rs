//! `POST /register/start` and `POST /register/verify`: sign-up and sign-in by
//! phone number with a 6-digit SMS code.
//!
//! Abuse protection is `codes.rs` (shared with email sign-up). `start` answers
//! the same whether or not the number has an account, so it can't be used to
//! find out. Both are refused (403) when `phone` is not an allowed sign-up method.

use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::phone::{self, E164};
use super::{ApiError, ApiJson, codes, json};
use crate::Server;
use crate::config::SignupMethod;
use crate::http::PeerAddr;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartRequest {
    phone: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VerifyRequest {
    phone: String,
    code: String,
    device_name: String,
}

pub(crate) async fn start(
    State(server): State<Arc<Server>>,
    peer: ConnectInfo<PeerAddr>,
    ApiJson(request): ApiJson<StartRequest>,
) -> Result<Response, ApiError> {
    allowed(&server, SignupMethod::Phone)?;
    let phone = parse_phone(&server, &request.phone)?;
    let code = codes::issue(&server, phone.as_str(), super::peer_ip(&peer), "number").await?;
    if let Err(error) = super::sms::send(&server, phone.as_str(), &code).await {
        tracing::warn!(%error, "sending the SMS code failed");
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "sms_failed",
            "the code could not be sent; try again later",
        ));
    }
    let ttl = server.config.phone.code_ttl_secs;
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "status": "code_sent", "phone": phone.as_str(), "expires_in": ttl }),
    ))
}

pub(crate) async fn verify(
    State(server): State<Arc<Server>>,
    ApiJson(request): ApiJson<VerifyRequest>,
) -> Result<Response, ApiError> {
    allowed(&server, SignupMethod::Phone)?;
    let phone = parse_phone(&server, &request.phone)?;
    let device_name = super::devices::check_device_name(&request.device_name)?;
    codes::check(&server, phone.as_str(), &request.code, "number").await?;
    let account = super::devices::ensure_phone_account(&server, &phone).await?;
    let issued = super::devices::issue(&server, phone.username(), device_name).await?;
    tracing::info!(user = %phone.username(), device = %issued.row.id, new = account, "phone sign-in");
    Ok(json(
        StatusCode::OK,
        serde_json::json!({
            "jid": super::jid_of(&server, phone.username()),
            "device_id": issued.row.id,
            "credential": issued.credential,
            "new_account": account,
        }),
    ))
}

/// `GET /register/methods`: the sign-up methods this server allows, so a client
/// offers only those.
pub(crate) async fn methods(State(server): State<Arc<Server>>) -> Response {
    let methods: Vec<&str> = server
        .config
        .signup_methods()
        .into_iter()
        .map(SignupMethod::as_str)
        .collect();
    json(StatusCode::OK, serde_json::json!({ "methods": methods }))
}

/// Refuses a sign-up method the configuration does not allow (403).
pub(crate) fn allowed(server: &Server, method: SignupMethod) -> Result<(), ApiError> {
    if server.config.signup_allowed(method) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "signup_method_disabled",
        format!("{} sign-up is not enabled on this server", method.as_str()),
    ))
}

fn parse_phone(server: &Server, input: &str) -> Result<E164, ApiError> {
    let region = phone::region(server.config.phone.default_region.as_deref());
    phone::normalize(input, region).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_phone",
            "not a valid phone number; use the international format, e.g. +44 20 7946 0958",
        )
    })
}
