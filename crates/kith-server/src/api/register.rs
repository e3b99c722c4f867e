//! `POST /register/start` and `POST /register/verify`: sign-up and sign-in by
//! phone number with a 6-digit SMS code.
//!
//! Abuse protection: codes are random, stored as an HMAC under a server secret,
//! compared in constant time and valid for `code_ttl_secs`; `max_code_failures`
//! wrong tries void the code and lock the number for `cooldown_secs`; sending is
//! limited per number and per client IP. `start` answers the same whether or not
//! the number has an account, so it can't be used to find out.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::Response;
use hmac::{Hmac, Mac};
use rand::Rng;
use serde::Deserialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::phone::{self, E164};
use super::{ApiError, ApiJson, json};
use crate::Server;
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
    let phone = parse_phone(&server, &request.phone)?;
    let now = crate::now_micros();
    if let Some(pending) = server.store.verification_code(phone.as_str()).await?
        && pending.locked_until_micros > now
    {
        return Err(cooling_down(pending.locked_until_micros - now));
    }
    let api = &server.api;
    api.codes_per_ip
        .acquire_or_wait(super::peer_ip(&peer))
        .map_err(|wait| {
            ApiError::too_many(
                "rate_limited",
                "too many codes requested from this address",
                wait,
            )
        })?;
    api.codes_per_number
        .acquire_or_wait(phone.as_str().to_owned())
        .map_err(|wait| {
            ApiError::too_many("rate_limited", "too many codes sent to this number", wait)
        })?;
    let code = format!("{:06}", rand::rng().random_range(0..1_000_000u32));
    let ttl = server.config.phone.code_ttl_secs;
    server
        .store
        .put_verification_code(
            phone.as_str(),
            &kith_store::VerificationCode {
                code_hash: code_hash(&server, &phone, &code).await?,
                expires_micros: now + secs_to_micros(ttl),
                failures: 0,
                locked_until_micros: 0,
            },
        )
        .await?;
    if let Err(error) = super::sms::send(&server, phone.as_str(), &code).await {
        tracing::warn!(%error, "sending the SMS code failed");
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "sms_failed",
            "the code could not be sent; try again later",
        ));
    }
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "status": "code_sent", "phone": phone.as_str(), "expires_in": ttl }),
    ))
}

pub(crate) async fn verify(
    State(server): State<Arc<Server>>,
    ApiJson(request): ApiJson<VerifyRequest>,
) -> Result<Response, ApiError> {
    let phone = parse_phone(&server, &request.phone)?;
    let device_name = super::devices::check_device_name(&request.device_name)?;
    let invalid = || ApiError::bad_request("invalid_code", "the code is not valid for this number");
    let code = request.code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request(
            "invalid_code",
            "the code has 6 digits",
        ));
    }
    let now = crate::now_micros();
    let pending = server
        .store
        .verification_code(phone.as_str())
        .await?
        .ok_or_else(invalid)?;
    if pending.locked_until_micros > now {
        return Err(cooling_down(pending.locked_until_micros - now));
    }
    if pending.expires_micros <= now {
        return Err(ApiError::bad_request(
            "code_expired",
            "the code has expired; ask for a new one",
        ));
    }
    let hash = code_hash(&server, &phone, code).await?;
    let right = bool::from(hash.ct_eq(&pending.code_hash));
    // The delete makes the code single-use even when two tries race.
    if !(right
        && server
            .store
            .consume_verification_code(phone.as_str(), &hash, now)
            .await?)
    {
        let config = &server.config.phone;
        let max = i64::from(config.max_code_failures);
        let failures = server
            .store
            .verification_failed(
                phone.as_str(),
                max,
                now + secs_to_micros(config.cooldown_secs),
            )
            .await?;
        if failures >= max {
            return Err(ApiError::too_many(
                "too_many_attempts",
                "too many wrong codes; wait, then ask for a new code",
                Duration::from_secs(config.cooldown_secs),
            ));
        }
        return Err(invalid().with("attempts_left", (max - failures).into()));
    }
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

fn parse_phone(server: &Server, input: &str) -> Result<E164, ApiError> {
    let region = phone::region(server.config.phone.default_region.as_deref());
    phone::normalize(input, region).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_phone",
            "not a valid phone number; use the international format, e.g. +44 20 7946 0958",
        )
    })
}

fn cooling_down(micros: i64) -> ApiError {
    ApiError::too_many(
        "too_many_attempts",
        "too many wrong codes for this number; wait before trying again",
        Duration::from_micros(u64::try_from(micros).unwrap_or(0)),
    )
}

fn secs_to_micros(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
}

/// HMAC-SHA256 of `phone:code` under a server secret kept in the store (shared
/// by all nodes), so a stolen table of codes can't be used as is.
async fn code_hash(server: &Server, phone: &E164, code: &str) -> Result<Vec<u8>, ApiError> {
    let key = server
        .api
        .code_key
        .get_or_try_init(|| async {
            let candidate: [u8; 32] = rand::random();
            server
                .store
                .secret_get_or_insert("phone-code-hmac", &candidate)
                .await
        })
        .await?;
    let mut mac = Hmac::<Sha256>::new_from_slice(key).map_err(ApiError::internal)?;
    mac.update(phone.as_str().as_bytes());
    mac.update(b":");
    mac.update(code.as_bytes());
    Ok(mac.finalize().into_bytes().to_vec())
}
