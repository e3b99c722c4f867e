//! The profile, privacy settings and account deletion over HTTP (issue 4):
//! `GET/PUT /privacy`, `GET/PUT /profile`, `PUT /profile/avatar`,
//! `GET /users/{jid}/profile` and `/users/{jid}/avatar`, `DELETE /account`.
//!
//! Everything goes through the same functions as XMPP: the profile setters of
//! `features::profile` publish over PEP (so contacts are notified), another
//! user's profile is filtered by `features::privacy::may_see` (their settings and
//! blocking), and deletion is `features::register::delete_account`, the one
//! XEP-0077 `<remove/>` uses.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use kith_proto::error::StanzaErrorCondition;
use kith_proto::stream::{Limits, parse_fragment};
use kith_proto::{BareJid, StanzaError};
use serde::Deserialize;

use super::{ApiError, ApiJson, Device, json};
use crate::Server;
use crate::features::privacy::{self, Field, Settings};
use crate::features::{pep, profile};

/// Image types an avatar may have, with the magic bytes that start such a file.
const AVATAR_TYPES: &[(&str, &[u8])] = &[
    ("image/png", b"\x89PNG\r\n\x1a\n"),
    ("image/jpeg", b"\xff\xd8\xff"),
    ("image/gif", b"GIF8"),
    ("image/webp", b"RIFF"),
];

fn bare_of(server: &Server, username: &str) -> Result<BareJid, ApiError> {
    BareJid::new(&super::jid_of(server, username)).map_err(ApiError::internal)
}

/// A stanza error from the profile functions as an API error.
fn from_stanza(error: StanzaError) -> ApiError {
    match error.condition {
        StanzaErrorCondition::BadRequest
        | StanzaErrorCondition::NotAcceptable
        | StanzaErrorCondition::PolicyViolation => ApiError::bad_request(
            "invalid_value",
            error.text.unwrap_or_else(|| "refused".to_owned()),
        ),
        _ => ApiError::internal(format!("{:?}", error.condition)),
    }
}

fn settings_json(settings: &Settings) -> serde_json::Value {
    serde_json::json!({
        "last_seen": settings.last_seen.as_str(),
        "profile_photo": settings.profile_photo.as_str(),
        "about": settings.about.as_str(),
        "read_receipts": settings.read_receipts,
    })
}

// ----------------------------------------------------------------------
// privacy
// ----------------------------------------------------------------------

pub(crate) async fn get_privacy(
    State(server): State<Arc<Server>>,
    device: Device,
) -> Result<Response, ApiError> {
    let settings = Settings::load(&server, &device.owner)
        .await
        .map_err(from_stanza)?;
    Ok(json(StatusCode::OK, settings_json(&settings)))
}

/// Changes the settings named in the body (an object; others stay).
pub(crate) async fn put_privacy(
    State(server): State<Arc<Server>>,
    device: Device,
    ApiJson(body): ApiJson<serde_json::Map<String, serde_json::Value>>,
) -> Result<Response, ApiError> {
    let mut settings = Settings::load(&server, &device.owner)
        .await
        .map_err(from_stanza)?;
    let before = settings;
    for (name, value) in &body {
        let text = match (name.as_str(), value) {
            ("read_receipts", serde_json::Value::Bool(on)) => on.to_string(),
            ("read_receipts", _) => {
                return Err(ApiError::bad_request(
                    "invalid_value",
                    "read_receipts must be true or false",
                ));
            }
            (_, serde_json::Value::String(text)) => text.clone(),
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_value",
                    format!("{name} must be \"everyone\", \"contacts\" or \"nobody\""),
                ));
            }
        };
        settings
            .apply(name, &text)
            .map_err(|message| ApiError::bad_request("invalid_value", message))?;
    }
    settings
        .save(&server, &device.owner, &before)
        .await
        .map_err(from_stanza)?;
    Ok(json(StatusCode::OK, settings_json(&settings)))
}

// ----------------------------------------------------------------------
// profile
// ----------------------------------------------------------------------

fn profile_json(jid: &BareJid, profile: &profile::Profile) -> serde_json::Value {
    let avatar = profile.avatar_hash.as_ref().map(|hash| {
        serde_json::json!({
            "hash": hash,
            "type": profile.avatar_type,
            "url": format!("/api/v1/users/{jid}/avatar"),
        })
    });
    serde_json::json!({
        "jid": jid.as_str(),
        "name": profile.nick,
        "about": profile.about,
        "avatar": avatar,
    })
}

pub(crate) async fn get_profile(
    State(server): State<Arc<Server>>,
    device: Device,
) -> Result<Response, ApiError> {
    let jid = bare_of(&server, &device.owner)?;
    let profile = profile::profile_get(&server, &device.owner)
        .await
        .map_err(from_stanza)?;
    Ok(json(StatusCode::OK, profile_json(&jid, &profile)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProfileRequest {
    name: Option<String>,
    about: Option<String>,
}

/// One line of profile text: at most `max` characters, no control characters
/// (about may hold line breaks).
fn check_text(field: &'static str, text: &str, max: usize, lines: bool) -> Result<(), ApiError> {
    let bad_char = text
        .chars()
        .any(|c| c.is_control() && !(lines && c == '\n'));
    if text.chars().count() > max || bad_char {
        return Err(ApiError::bad_request(
            "invalid_value",
            format!("{field} must be at most {max} characters without control characters"),
        ));
    }
    Ok(())
}

pub(crate) async fn put_profile(
    State(server): State<Arc<Server>>,
    device: Device,
    ApiJson(request): ApiJson<ProfileRequest>,
) -> Result<Response, ApiError> {
    let jid = bare_of(&server, &device.owner)?;
    let limits = &server.config.pep;
    if let Some(name) = &request.name {
        check_text("name", name.trim(), limits.max_nick_chars, false)?;
        if name.trim().is_empty() {
            return Err(ApiError::bad_request(
                "invalid_value",
                "name must not be empty",
            ));
        }
    }
    if let Some(about) = &request.about {
        check_text("about", about, limits.max_about_chars, true)?;
    }
    if let Some(name) = &request.name {
        profile::set_nick(&server, &jid, name.trim())
            .await
            .map_err(from_stanza)?;
    }
    if let Some(about) = &request.about {
        profile::set_about(&server, &jid, about)
            .await
            .map_err(from_stanza)?;
    }
    get_profile(State(server), device).await
}

/// The image's type from `Content-Type`, checked against its first bytes.
fn avatar_type<'a>(headers: &'a HeaderMap, image: &[u8]) -> Result<&'a str, ApiError> {
    let declared = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim())
        .unwrap_or("");
    let Some((kind, magic)) = AVATAR_TYPES.iter().find(|(kind, _)| *kind == declared) else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_type",
            "the avatar must be image/png, image/jpeg, image/gif or image/webp",
        ));
    };
    let webp_ok = *kind != "image/webp" || image.get(8..12) == Some(b"WEBP");
    if !image.starts_with(magic) || !webp_ok {
        return Err(ApiError::bad_request(
            "invalid_image",
            format!("the body is not a {kind} image"),
        ));
    }
    Ok(declared)
}

pub(crate) async fn put_avatar(
    State(server): State<Arc<Server>>,
    device: Device,
    headers: HeaderMap,
    image: Bytes,
) -> Result<Response, ApiError> {
    let limit = server.config.pep.max_avatar_bytes;
    if image.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the avatar is larger than {limit} bytes"),
        ));
    }
    let kind = avatar_type(&headers, &image)?;
    let jid = bare_of(&server, &device.owner)?;
    profile::set_avatar(&server, &jid, &image, kind)
        .await
        .map_err(from_stanza)?;
    get_profile(State(server), device).await
}

// ----------------------------------------------------------------------
// other users
// ----------------------------------------------------------------------

/// The account named in the path (a bare JID of this server, or its local
/// part), if it exists.
async fn account_of(server: &Server, jid: &str) -> Result<BareJid, ApiError> {
    let not_found = || ApiError::not_found("user_not_found", "no such user");
    let jid = if jid.contains('@') {
        jid.to_owned()
    } else {
        super::jid_of(server, jid)
    };
    let bare = BareJid::new(&jid).map_err(|_| not_found())?;
    let username = bare
        .node()
        .filter(|_| server.is_local_user(&bare))
        .ok_or_else(not_found)?;
    if !server.store.user_exists(username.as_str()).await? {
        return Err(not_found());
    }
    Ok(bare)
}

/// Another user's profile, as their privacy settings and blocking allow:
/// hidden parts are `null`. A user who blocked the caller (or whom the caller
/// blocked) looks like no user at all.
pub(crate) async fn get_user_profile(
    State(server): State<Arc<Server>>,
    device: Device,
    Path(jid): Path<String>,
) -> Result<Response, ApiError> {
    let owner = account_of(&server, &jid).await?;
    let viewer = bare_of(&server, &device.owner)?;
    if server.blocked_between(&owner, &viewer).await {
        return Err(ApiError::not_found("user_not_found", "no such user"));
    }
    let username = owner.node().map_or("", |n| n.as_str());
    let mut shown = profile::profile_get(&server, username)
        .await
        .map_err(from_stanza)?;
    if !privacy::may_see(&server, &owner, &viewer, Field::ProfilePhoto)
        .await
        .map_err(from_stanza)?
    {
        shown.avatar_hash = None;
        shown.avatar_type = None;
    }
    if !privacy::may_see(&server, &owner, &viewer, Field::About)
        .await
        .map_err(from_stanza)?
    {
        shown.about = None;
    }
    Ok(json(StatusCode::OK, profile_json(&owner, &shown)))
}

/// Another user's (or one's own) avatar image, if their settings show it.
pub(crate) async fn get_user_avatar(
    State(server): State<Arc<Server>>,
    device: Device,
    Path(jid): Path<String>,
) -> Result<Response, ApiError> {
    let no_avatar = || ApiError::not_found("no_avatar", "no avatar to show");
    let owner = account_of(&server, &jid).await?;
    let viewer = bare_of(&server, &device.owner)?;
    if !privacy::may_see(&server, &owner, &viewer, Field::ProfilePhoto)
        .await
        .map_err(from_stanza)?
    {
        return Err(no_avatar());
    }
    let username = owner.node().map_or("", |n| n.as_str());
    let shown = profile::profile_get(&server, username)
        .await
        .map_err(from_stanza)?;
    let Some(hash) = shown.avatar_hash else {
        return Err(no_avatar());
    };
    let image = server
        .store
        .pep_items_by_id(username, pep::NODE_AVATAR_DATA, std::slice::from_ref(&hash))
        .await?
        .into_iter()
        .next()
        .and_then(|item| parse_fragment(item.payload.as_bytes(), Limits::default()).ok())
        .and_then(|data| {
            let text: String = data
                .text_content()
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            base64::engine::general_purpose::STANDARD.decode(text).ok()
        })
        .ok_or_else(no_avatar)?;
    let kind = shown
        .avatar_type
        .filter(|t| AVATAR_TYPES.iter().any(|(k, _)| k == t))
        .unwrap_or_else(|| "application/octet-stream".to_owned());
    Ok((
        [
            (header::CONTENT_TYPE, kind),
            (header::ETAG, format!("\"{hash}\"")),
            (header::CACHE_CONTROL, "private, no-cache".to_owned()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
        ],
        image,
    )
        .into_response())
}

// ----------------------------------------------------------------------
// account
// ----------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DeleteRequest {
    /// The account's phone number, typed again by the user.
    confirm: String,
}

/// Deletes the caller's account and everything it owns, once the body repeats
/// its phone number (any format the number parser accepts).
pub(crate) async fn delete_account(
    State(server): State<Arc<Server>>,
    device: Device,
    ApiJson(request): ApiJson<DeleteRequest>,
) -> Result<Response, ApiError> {
    let phone = server.store.phone_of(&device.owner).await?;
    let region = phone.as_deref().and_then(super::phone::region_of);
    let confirmed = super::phone::normalize(&request.confirm, region)
        .is_some_and(|typed| Some(typed.as_str()) == phone.as_deref());
    if !confirmed {
        return Err(ApiError::bad_request(
            "confirmation_mismatch",
            "confirm must be this account's phone number",
        ));
    }
    let jid = bare_of(&server, &device.owner)?;
    crate::features::register::delete_account(&server, &jid)
        .await
        .map_err(from_stanza)?;
    tracing::info!(user = %device.owner, "account deleted over the API");
    Ok(StatusCode::NO_CONTENT.into_response())
}
