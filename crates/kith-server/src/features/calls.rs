//! Calls: XEP-0215 External Service Discovery tells a device where the STUN and
//! TURN services are that the ICE of a call needs (XEP-0176 with XEP-0167
//! media). The call itself is set up between devices: XEP-0353 proposals are
//! messages, logged and delivered to every device like any other, and Jingle
//! (XEP-0166) IQs go between full JIDs.
//!
//! STUN is this server's own (`stun.rs`, `[listen] stun`). TURN is its own
//! relay on the same port (`turn.rs`), or an external server (`[calls]
//! turn_host`, e.g. coturn) that shares a secret with kith. Credentials
//! follow the scheme coturn's `use-auth-secret` implements
//! (draft-uberti-behave-turn-rest-00 §2.2): the username is the
//! expiry in unix seconds and the user's bare JID, the password the base64
//! HMAC-SHA1 of the username under the secret, so that the TURN server checks
//! them on its own and they stop working when they expire.

use kith_proto::{Element, StanzaError};

use super::{Request, Response, Target};
use crate::Server;
use crate::session::Session;

/// XEP-0215 version 2.
pub(crate) const NS: &str = "urn:xmpp:extdisco:2";

/// Answers `<services/>` (§3.1, optionally of one `type`) and `<credentials/>`
/// (§3.3) on the server's own JID.
pub(crate) fn handle(session: &mut Session, request: &Request<'_>) -> Response {
    // §3: both are IQ-get, and the server speaks for itself only.
    if request.set {
        return Err(StanzaError::bad_request());
    }
    if !matches!(request.target, Target::Server) {
        return Err(StanzaError::service_unavailable());
    }
    let services = services(&session.server, session.bare.as_str(), crate::now_micros());
    let payload = request.payload;
    match payload.name.as_str() {
        "services" => {
            let kind = payload.get_attr("type").filter(|kind| !kind.is_empty());
            let mut answer = Element::new(NS, "services");
            if let Some(kind) = kind {
                answer.set_attr("type", kind);
            }
            for service in services
                .into_iter()
                .filter(|s| kind.is_none_or(|kind| s.get_attr("type") == Some(kind)))
            {
                answer.push_child(service);
            }
            Ok(Some(answer))
        }
        "credentials" => {
            let Some(wanted) = payload.get_child("service", NS) else {
                return Err(StanzaError::bad_request().with_text("which service?"));
            };
            // §3.3: named by host and type; port and transport narrow it.
            let found: Vec<Element> = services
                .into_iter()
                .filter(|service| service.get_attr("username").is_some())
                .filter(|service| {
                    ["host", "type", "port", "transport"].iter().all(|name| {
                        wanted
                            .get_attr(name)
                            .is_none_or(|value| service.get_attr(name) == Some(value))
                    })
                })
                .collect();
            if found.is_empty() || wanted.get_attr("host").is_none() {
                return Err(StanzaError::item_not_found());
            }
            let mut answer = Element::new(NS, "credentials");
            for service in found {
                answer.push_child(service);
            }
            Ok(Some(answer))
        }
        _ => Err(StanzaError::feature_not_implemented()),
    }
}

/// The services `user` may use at `now_micros`: this server's STUN listener,
/// if it runs, and the TURN server's transports with a credential each.
fn services(server: &Server, user: &str, now_micros: i64) -> Vec<Element> {
    let calls = &server.config.calls;
    let own_host = calls.stun_host.as_deref().unwrap_or(&server.domain);
    let mut services = Vec::new();
    if let Some(stun) = server.stun_addr() {
        services.push(
            Element::new(NS, "service")
                .attr("type", "stun")
                .attr("host", own_host)
                .attr("port", stun.port().to_string())
                .attr("transport", "udp")
                .attr("name", "kith"),
        );
    }
    // An external TURN server, or this server's own relay on the STUN port.
    let turn = match (
        &calls.turn_host,
        &calls.turn_secret,
        server.relay(),
        server.stun_addr(),
    ) {
        (Some(host), Some(secret), _, _) => Some((
            host.as_str(),
            calls.turn_port,
            calls.turn_transports.as_slice(),
            secret.as_bytes(),
        )),
        (None, _, Some(relay), Some(stun)) => Some((
            own_host,
            stun.port(),
            &["udp".to_owned()][..],
            relay.secret(),
        )),
        _ => None,
    };
    if let Some((host, port, transports, secret)) = turn {
        let ttl = i64::try_from(calls.credential_ttl_secs).unwrap_or(86_400);
        let expires = now_micros / 1_000_000 + ttl;
        let Some((username, password)) = turn_credential(secret, user, expires) else {
            return services;
        };
        for transport in transports {
            services.push(
                Element::new(NS, "service")
                    .attr("type", "turn")
                    .attr("host", host)
                    .attr("port", port.to_string())
                    .attr("transport", transport.as_str())
                    .attr("username", username.as_str())
                    .attr("password", password.as_str())
                    .attr(
                        "expires",
                        crate::datetime::format_datetime(expires * 1_000_000),
                    )
                    .attr("restricted", "1"),
            );
        }
    }
    services
}

/// A TURN username and password for `user` that work until `expires` (unix
/// seconds) with a TURN server sharing `secret` (see the module's doc).
fn turn_credential(secret: &[u8], user: &str, expires: i64) -> Option<(String, String)> {
    let username = format!("{expires}:{user}");
    let password = turn_password(secret, &username)?;
    Some((username, password))
}

/// The password of a TURN `username` under `secret`: base64 HMAC-SHA1, what
/// coturn's `use-auth-secret` and kith's own relay (`turn.rs`) check.
pub(crate) fn turn_password(secret: &[u8], username: &str) -> Option<String> {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret).ok()?;
    mac.update(username.as_bytes());
    Some(base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_credential_is_what_coturn_computes_from_the_secret() {
        // The password as Python computes it: base64(hmac-sha1(secret, username)).
        assert_eq!(
            turn_credential(b"north-pole-secret-1234", "alice@localhost", 1_700_000_000),
            Some((
                "1700000000:alice@localhost".to_owned(),
                "ysHHLqIaES0/GJxVUCloB2CISdk=".to_owned()
            ))
        );
    }
}
