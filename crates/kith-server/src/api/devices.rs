//! Devices: issuing credentials, listing and revoking them (`/devices`), and
//! linking a new device WhatsApp-Web style (`/link/*`):
//!
//! 1. the new device calls `POST /link/start` and shows the returned code as text
//!    and QR image (`qr_svg`); it keeps `link_id` and `poll_token` to itself;
//! 2. a signed-in device sends the code to `POST /link/approve`;
//! 3. the new device's `POST /link/poll` then returns its own credential, once.
//!
//! Revoking deletes the credential and its inbox-log device, and ends the
//! device's sessions at once, including one waiting to be resumed.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rand::seq::IndexedRandom;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::phone::E164;
use super::{ApiError, ApiJson, Device, json};
use crate::Server;
use crate::credentials::{self, Issued};
use crate::http::PeerAddr;

/// Link codes: 8 characters without look-alikes (no 0/O, 1/I), ~40 bits.
const LINK_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
const LINK_CODE_LEN: usize = 8;

/// A device name: 1 to 64 characters, no control characters.
pub(crate) fn check_device_name(name: &str) -> Result<&str, ApiError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid_device_name",
            "device_name must be 1 to 64 characters without control characters",
        ));
    }
    Ok(name)
}

/// Creates the account of a verified number if it is new; `true` if it was.
pub(crate) async fn ensure_phone_account(server: &Server, phone: &E164) -> Result<bool, ApiError> {
    if server.store.phone_owner(phone.as_str()).await?.is_some() {
        return Ok(false);
    }
    // The account password is random and never told to anyone: phone accounts
    // sign in with device credentials only, which share its salts.
    let password = crate::random_id(32);
    let account = tokio::task::spawn_blocking(move || crate::accounts::credentials_for(&password))
        .await
        .map_err(ApiError::internal)?;
    match server
        .store
        .claim_phone_account(phone.as_str(), phone.username(), &account)
        .await?
    {
        kith_store::PhoneClaim::Created => Ok(true),
        kith_store::PhoneClaim::Existing => Ok(false),
        kith_store::PhoneClaim::UsernameTaken => Err(ApiError::new(
            StatusCode::CONFLICT,
            "username_taken",
            "an account with this number's name exists but is not a phone account",
        )),
    }
}

/// Issues and stores a credential for a new device of `username`.
pub(crate) async fn issue(server: &Server, username: &str, name: &str) -> Result<Issued, ApiError> {
    let existing = server.store.device_credentials(username).await?;
    if existing.len() >= server.config.phone.max_devices_per_user {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "too_many_devices",
            "this account has as many devices as allowed; remove one first",
        ));
    }
    let account = server
        .store
        .credentials(username)
        .await?
        .ok_or_else(|| ApiError::internal("account vanished while issuing a credential"))?;
    let (owner, name) = (username.to_owned(), name.to_owned());
    let issued = tokio::task::spawn_blocking(move || {
        credentials::issue(&owner, &name, &account, crate::now_micros())
    })
    .await
    .map_err(ApiError::internal)?;
    server.store.add_device_credential(&issued.row).await?;
    Ok(issued)
}

pub(crate) async fn list(
    State(server): State<Arc<Server>>,
    device: Device,
) -> Result<Response, ApiError> {
    let devices: Vec<serde_json::Value> = server
        .store
        .device_credentials(&device.owner)
        .await?
        .into_iter()
        .map(|row| {
            serde_json::json!({
                "id": row.id,
                "name": row.name,
                "created_at": row.created_micros / 1_000_000,
                "last_used_at": row.last_used_micros / 1_000_000,
                "current": row.id == device.id,
            })
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "jid": super::jid_of(&server, &device.owner), "devices": devices }),
    ))
}

pub(crate) async fn revoke(
    State(server): State<Arc<Server>>,
    device: Device,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if revoke_device(&server, &device.owner, &id).await?.is_none() {
        return Err(ApiError::not_found(
            "device_not_found",
            "this account has no such device",
        ));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// Revokes `owner`'s device credential `id` (it can no longer sign in) and
/// ends its sessions on this server, attached or waiting to resume; how many
/// ended, or `None` if the account has no such device. For the HTTP API and
/// the operator's socket (`admin.rs`) alike.
pub(crate) async fn revoke_device(
    server: &Server,
    owner: &str,
    id: &str,
) -> Result<Option<usize>, kith_store::StoreError> {
    let removed = server
        .store
        .revoke_device_credential(owner, id, &credentials::device_resource(id))
        .await?;
    if !removed {
        return Ok(None);
    }
    let bare = super::jid_of(server, owner);
    if let Some(cluster) = &server.cluster {
        cluster.revoke(&bare, id);
    }
    let sessions = server.router.revoke_device(&bare, id);
    tracing::info!(user = %owner, device = %id, sessions, "device revoked");
    Ok(Some(sessions))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LinkStartRequest {
    device_name: String,
}

pub(crate) async fn link_start(
    State(server): State<Arc<Server>>,
    peer: ConnectInfo<PeerAddr>,
    ApiJson(request): ApiJson<LinkStartRequest>,
) -> Result<Response, ApiError> {
    let device_name = check_device_name(&request.device_name)?;
    server
        .api
        .links_per_ip
        .acquire_or_wait(super::peer_ip(&peer))
        .map_err(|wait| {
            ApiError::too_many(
                "rate_limited",
                "too many link requests from this address",
                wait,
            )
        })?;
    let code: String = {
        let mut rng = rand::rng();
        (0..LINK_CODE_LEN)
            .filter_map(|_| LINK_ALPHABET.choose(&mut rng).map(|&b| char::from(b)))
            .collect()
    };
    let id = crate::random_id(16);
    let poll_token = crate::random_id(32);
    let ttl = server.config.phone.link_ttl_secs;
    let now = crate::now_micros();
    server
        .store
        .create_link_request(
            &kith_store::LinkRequest {
                id: id.clone(),
                code_hash: sha256(&code),
                poll_hash: sha256(&poll_token),
                device_name: device_name.to_owned(),
                expires_micros: now + i64::try_from(ttl * 1_000_000).unwrap_or(i64::MAX),
                approved_owner: None,
            },
            now,
        )
        .await?;
    let shown = format!("{}-{}", &code[..4], &code[4..]);
    Ok(json(
        StatusCode::CREATED,
        serde_json::json!({
            "link_id": id,
            "poll_token": poll_token,
            "code": shown,
            "qr_svg": qr_svg(&shown)?,
            "expires_in": ttl,
        }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LinkApproveRequest {
    code: String,
}

pub(crate) async fn link_approve(
    State(server): State<Arc<Server>>,
    device: Device,
    ApiJson(request): ApiJson<LinkApproveRequest>,
) -> Result<Response, ApiError> {
    let code: String = request
        .code
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    let name = server
        .store
        .approve_link_request(&sha256(&code), &device.owner, crate::now_micros())
        .await?
        .ok_or_else(link_not_found)?;
    tracing::info!(user = %device.owner, by = %device.id, "link request approved");
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "status": "approved", "device_name": name }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LinkPollRequest {
    link_id: String,
    poll_token: String,
}

pub(crate) async fn link_poll(
    State(server): State<Arc<Server>>,
    ApiJson(request): ApiJson<LinkPollRequest>,
) -> Result<Response, ApiError> {
    let link = server
        .store
        .link_request(&request.link_id)
        .await?
        .ok_or_else(link_not_found)?;
    if !bool::from(sha256(&request.poll_token).ct_eq(&link.poll_hash)) {
        return Err(link_not_found());
    }
    if link.expires_micros <= crate::now_micros() {
        server.store.delete_link_request(&link.id).await?;
        return Err(link_not_found());
    }
    let Some(owner) = link.approved_owner else {
        return Ok(json(
            StatusCode::OK,
            serde_json::json!({ "status": "pending" }),
        ));
    };
    // One-time: whoever deletes the request gets the credential.
    if !server.store.delete_link_request(&link.id).await? {
        return Err(link_not_found());
    }
    let issued = issue(&server, &owner, &link.device_name).await?;
    tracing::info!(user = %owner, device = %issued.row.id, "device linked");
    Ok(json(
        StatusCode::OK,
        serde_json::json!({
            "status": "approved",
            "jid": super::jid_of(&server, &owner),
            "device_id": issued.row.id,
            "credential": issued.credential,
        }),
    ))
}

fn link_not_found() -> ApiError {
    ApiError::not_found(
        "link_not_found",
        "no such link request (wrong, expired or already used)",
    )
}

fn sha256(text: &str) -> Vec<u8> {
    Sha256::digest(text.as_bytes()).to_vec()
}

/// `text` (a link code, an invite URL) as an SVG QR code.
pub(crate) fn qr_svg(text: &str) -> Result<String, ApiError> {
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(ApiError::internal)?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .build())
}
