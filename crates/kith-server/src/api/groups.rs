//! Groups over HTTP (issue 5): `POST /groups` creates a group (a XEP-0045
//! members-only room, `features::muc::create_group`), invite links are created,
//! revoked and shown as a QR code, `POST /join/{token}` makes the caller a
//! member (the same path as the `<redeem/>` IQ), `GET /join/{token}` tells the
//! group's name before joining (for the web client), and `GET /join/<token>` (outside
//! `/api/v1`) is the page a shared link opens.
//!
//! Authorisation is the group's own: the caller acts as their bare JID, so
//! only admins and owners (members, when the group allows it) make links.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kith_proto::error::StanzaErrorCondition;
use kith_proto::{Jid, StanzaError};
use serde::Deserialize;

use super::{ApiError, ApiJson, Device, json};
use crate::Server;
use crate::features::muc::invite;

/// Longest group name accepted, in characters.
const MAX_NAME_CHARS: usize = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CreateRequest {
    name: String,
    #[serde(default)]
    members: Vec<String>,
    #[serde(default)]
    announcement: bool,
}

pub(crate) async fn create(
    State(server): State<Arc<Server>>,
    device: Device,
    ApiJson(request): ApiJson<CreateRequest>,
) -> Result<Response, ApiError> {
    let name = request.name.trim();
    if name.is_empty()
        || name.chars().count() > MAX_NAME_CHARS
        || name.chars().any(char::is_control)
    {
        return Err(ApiError::bad_request(
            "invalid_name",
            format!("name must be 1 to {MAX_NAME_CHARS} characters without control characters"),
        ));
    }
    let mut members = Vec::with_capacity(request.members.len());
    for member in &request.members {
        members.push(bare_jid(member).ok_or_else(|| {
            ApiError::bad_request("invalid_jid", format!("not a JID: {member:?}"))
        })?);
    }
    let owner = super::jid_of(&server, &device.owner);
    let room = invite::create_group(&server, &owner, name, &members, request.announcement)
        .await
        .map_err(from_stanza)?;
    tracing::info!(%room, %owner, members = members.len(), "group created over HTTP");
    Ok(json(
        StatusCode::CREATED,
        serde_json::json!({ "jid": room, "name": name, "announcement": request.announcement }),
    ))
}

pub(crate) async fn create_link(
    State(server): State<Arc<Server>>,
    device: Device,
    Path(room): Path<String>,
) -> Result<Response, ApiError> {
    let room = room_jid(&room)?;
    let requester = super::jid_of(&server, &device.owner);
    let (link, url) = invite::create_link(&server, &room, &requester)
        .await
        .map_err(from_stanza)?;
    Ok(json(
        StatusCode::CREATED,
        serde_json::json!({ "token": link.token, "url": url, "room": link.room }),
    ))
}

pub(crate) async fn revoke_link(
    State(server): State<Arc<Server>>,
    device: Device,
    Path((room, token)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let room = room_jid(&room)?;
    let requester = super::jid_of(&server, &device.owner);
    invite::revoke_link(&server, &room, &token, &requester)
        .await
        .map_err(from_stanza)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The invite link as an SVG QR code; anyone holding the link may fetch it
/// (the token is the secret), so no credential is needed.
pub(crate) async fn link_qr(
    State(server): State<Arc<Server>>,
    Path((room, token)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let room = room_jid(&room)?;
    let link = invite::link_preview(&server, &token)
        .await
        .map_err(from_stanza)?
        .map(|(link, _)| link)
        .filter(|link| link.room == room && !link.revoked)
        .ok_or_else(|| ApiError::not_found("no_such_link", "no such invite link"))?;
    let url = server.config.muc.invite_url(&server.domain, &link.token);
    let svg = super::devices::qr_svg(&url)?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        svg,
    )
        .into_response())
}

/// `GET /join/{token}`: what the link opens, before joining — the group's JID
/// and name (as the public join page shows them; the token is the secret, so no
/// credential is needed). Unknown: 404; revoked: 410.
pub(crate) async fn join_preview(
    State(server): State<Arc<Server>>,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let (link, name) = invite::link_preview(&server, &token)
        .await
        .map_err(from_stanza)?
        .ok_or_else(|| ApiError::not_found("not_found", "no such invite link"))?;
    if link.revoked {
        return Err(ApiError::new(
            StatusCode::GONE,
            "gone",
            "this invite link was revoked",
        ));
    }
    let name = if name.is_empty() {
        link.room.split('@').next().unwrap_or_default().to_owned()
    } else {
        name
    };
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "jid": link.room, "name": name }),
    ))
}

pub(crate) async fn join(
    State(server): State<Arc<Server>>,
    device: Device,
    Path(token): Path<String>,
) -> Result<Response, ApiError> {
    let requester = super::jid_of(&server, &device.owner);
    let room = invite::redeem_link(&server, &token, &requester)
        .await
        .map_err(from_stanza)?;
    Ok(json(StatusCode::OK, serde_json::json!({ "jid": room })))
}

/// `GET /join/<token>`: the page a shared invite link opens.
pub(crate) fn page_router() -> Router<Arc<Server>> {
    Router::new().route("/join/{token}", get(join_page))
}

async fn join_page(
    State(server): State<Arc<Server>>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> Response {
    let (status, title, body) = match invite::link_preview(&server, &token).await {
        Ok(Some((link, name))) if !link.revoked => (
            StatusCode::OK,
            format!("Join {}", escape(&name)),
            format!(
                "<h1>{name}</h1>\n<p>You have been invited to join the group <strong>{name}</strong> on {domain}.</p>\n\
                 <p><a class=\"button\" href=\"/#join={token}\">Join in the web client</a></p>\n\
                 <p>In another app: sign in, then <code>POST /api/v1/join/{token}</code>, or join \
                 <a href=\"xmpp:{room}?join\">{room}</a> from an XMPP client after redeeming the link.</p>\n\
                 <p><img alt=\"QR code of this link\" width=\"200\" height=\"200\" \
                 src=\"/api/v1/groups/{room}/invite-links/{token}/qr\"></p>",
                name = escape(&name),
                domain = escape(&server.domain),
                token = escape(&link.token),
                room = escape(&link.room),
            ),
        ),
        Ok(Some(_)) => (
            StatusCode::GONE,
            "Invite link revoked".to_owned(),
            "<h1>This invite link was revoked</h1>\n<p>Ask a group admin for a new one.</p>"
                .to_owned(),
        ),
        Ok(None) => (
            StatusCode::NOT_FOUND,
            "No such invite link".to_owned(),
            "<h1>No such invite link</h1>\n<p>Check the link, or ask for a new one.</p>".to_owned(),
        ),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Error".to_owned(),
            "<h1>Something went wrong</h1>".to_owned(),
        ),
    };
    let page = format!(
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <meta name=\"referrer\" content=\"no-referrer\">\n\
         <title>{title}</title>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8".to_owned()),
            (header::CACHE_CONTROL, "no-store".to_owned()),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
            (header::REFERRER_POLICY, "no-referrer".to_owned()),
            (
                header::CONTENT_SECURITY_POLICY,
                crate::web::content_security_policy(&headers),
            ),
        ],
        page,
    )
        .into_response()
}

/// Text for an HTML text node or a quoted attribute value.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn bare_jid(text: &str) -> Option<String> {
    let jid = Jid::new(text.trim()).ok()?;
    Some(jid.to_bare().to_string())
}

fn room_jid(text: &str) -> Result<String, ApiError> {
    bare_jid(text)
        .filter(|jid| jid.contains('@'))
        .ok_or_else(|| ApiError::bad_request("invalid_jid", "not a group JID"))
}

/// The HTTP status for a group's refusal (RFC 6120 §8.3.3 conditions).
fn from_stanza(error: StanzaError) -> ApiError {
    use StanzaErrorCondition as C;
    let (status, code) = match error.condition {
        C::ItemNotFound => (StatusCode::NOT_FOUND, "not_found"),
        C::Gone => (StatusCode::GONE, "gone"),
        C::Forbidden | C::NotAuthorized | C::RegistrationRequired => {
            (StatusCode::FORBIDDEN, "forbidden")
        }
        C::NotAllowed | C::Conflict => (StatusCode::CONFLICT, "not_allowed"),
        C::BadRequest | C::JidMalformed | C::NotAcceptable => {
            (StatusCode::BAD_REQUEST, "invalid_request")
        }
        C::ServiceUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "groups_unavailable"),
        _ => return ApiError::internal(error.condition),
    };
    let message = error
        .text
        .unwrap_or_else(|| error.condition.as_str().to_owned());
    ApiError::new(status, code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_neutralises_markup() {
        assert_eq!(
            escape("<b a=\"1\">'&'</b>"),
            "&lt;b a=&quot;1&quot;&gt;&#39;&amp;&#39;&lt;/b&gt;"
        );
    }
}
