//! The modern login (XEP-0388 SASL2) and what it carries inline: a resource
//! bound with the session's features on (XEP-0386 Bind 2), a session resumed
//! (XEP-0198 §9), and tokens for a one-round-trip login next time (XEP-0484
//! FAST, mechanism HT-SHA-256-NONE).
//!
//! A client that knows SASL2 goes from TLS to a live session in one exchange
//! (two round trips with SCRAM, one with a FAST token), where RFC 6120 takes a
//! stream restart, a bind and a stream-management round trip more. The
//! password mechanisms are `c2s::authenticate`'s, run with SASL2's elements;
//! the classic profile stays on offer beside it.

use std::sync::Arc;

use hmac::{Hmac, Mac};
use kith_proto::sasl::{self, HT_SHA_256_NONE, HtInitiator, Mechanism, SaslError};
use kith_proto::{Element, ns};
use sha2::{Digest, Sha256};

use crate::Server;
use crate::c2s::{self, Authenticated, Ended, Negotiated, SignedIn};
use crate::features::carbons::CARBONS;
use crate::link::Link;
use crate::session::{self, SM};

/// The `<authentication/>` stream feature (XEP-0388 §2.1), with the inline
/// features the server takes (§2.1, XEP-0386 §3.1, XEP-0198 §9.1, XEP-0484 §3.1).
pub(crate) fn feature(server: &Server) -> Element {
    let mut authentication = Element::new(ns::SASL2, "authentication");
    for mechanism in sasl::MECHANISMS {
        authentication.push_child(Element::new(ns::SASL2, "mechanism").text(mechanism.name()));
    }
    let feature = |var: &str| Element::new(ns::BIND2, "feature").attr("var", var);
    let bind = Element::new(ns::BIND2, "bind").child(
        Element::new(ns::BIND2, "inline")
            .child(feature(CARBONS))
            .child(feature(crate::csi::CSI))
            .child(feature(SM)),
    );
    let mut inline = Element::new(ns::SASL2, "inline").child(bind);
    // XEP-0198 §9.1: resumption inline, when sessions can be resumed at all.
    if server.config.limits.resume_timeout_secs > 0 {
        inline.push_child(Element::new(SM, "sm"));
    }
    if fast_enabled(server) {
        // XEP-0484 §3.1: FAST mechanisms are listed here, not with the others.
        inline.push_child(
            Element::new(ns::FAST, "fast")
                .child(Element::new(ns::FAST, "mechanism").text(HT_SHA_256_NONE)),
        );
    }
    authentication.child(inline)
}

/// A tag of the account's password as stored (a hash of its SCRAM-SHA-256
/// key). A FAST token keeps the tag of the password login it came from and
/// works only while the account's is the same: a password change voids it
/// even when the login that asked for it had begun under the old password.
pub(crate) fn account_key(stored: &kith_store::StoredCredentials) -> String {
    Sha256::digest(&stored.sha256.stored_key)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn fast_enabled(server: &Server) -> bool {
    server.config.limits.fast_token_secs > 0
}

/// What a successful authentication answers: the mechanism's last data, and
/// the results of inline requests. The authorization identifier comes last,
/// when it is known: a resumed session's is that session's JID.
pub(crate) struct Success {
    additional: Vec<u8>,
    inline: Vec<Element>,
}

impl Success {
    /// `<success/>` (XEP-0388 §2.6.1) for `authorized` (a bare JID, or the
    /// full JID once a resource is bound), with `more` inline results.
    pub(crate) fn element(
        &self,
        authorized: &str,
        more: impl IntoIterator<Item = Element>,
    ) -> Element {
        let mut success = Element::new(ns::SASL2, "success");
        if !self.additional.is_empty() {
            success.push_child(
                Element::new(ns::SASL2, "additional-data")
                    .text(sasl::encode_payload(&self.additional)),
            );
        }
        success.push_child(Element::new(ns::SASL2, "authorization-identifier").text(authorized));
        for element in self.inline.iter().cloned().chain(more) {
            success.push_child(element);
        }
        success
    }
}

/// The client's `<user-agent id/>` (XEP-0388 §2.3: "MUST be a UUID v4"), if it
/// sent one of that shape. FAST tokens and stable resources are keyed by it.
fn user_agent(request: &Element) -> Option<&str> {
    let id = request.get_child("user-agent", ns::SASL2)?.get_attr("id")?;
    let groups: Vec<&str> = id.split('-').collect();
    let shaped = groups.iter().map(|g| g.len()).eq([8, 4, 4, 4, 12])
        && groups
            .iter()
            .all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()));
    shaped.then_some(id)
}

/// One `<authenticate/>` (XEP-0388 §2.3) to its end. The outer `Result` is for
/// the link; the inner is the SASL outcome, a failure being the caller's to
/// report (as for the classic profile).
pub(crate) async fn authenticate<L: Link>(
    server: &Arc<Server>,
    link: &mut L,
    request: &Element,
) -> Result<Result<SignedIn, SaslError>, Ended> {
    let mechanism = request.get_attr("mechanism").unwrap_or_default();
    let initial = match request.get_child("initial-response", ns::SASL2) {
        Some(initial) => match sasl::decode_payload(&initial.text_content()) {
            Ok(payload) => Some(payload),
            Err(error) => return Ok(Err(error)),
        },
        None => None,
    };
    let agent = user_agent(request);
    // Signed in with a FAST token: when it was issued, and its chain began.
    let mut token_login = None;
    let mut authenticated = if mechanism == HT_SHA_256_NONE && fast_enabled(server) {
        // XEP-0484 §4: tokens are per client, so a FAST login names its client.
        let Some(agent) = agent else {
            return Ok(Err(SaslError::MalformedRequest));
        };
        match fast_login(server, agent, initial.as_deref()).await {
            Ok((authenticated, login)) => {
                token_login = Some(login);
                authenticated
            }
            Err(error) => return Ok(Err(error)),
        }
    } else {
        match c2s::authenticate(
            server,
            link,
            Mechanism::parse(mechanism),
            initial,
            true,
            ns::SASL2,
        )
        .await?
        {
            Ok(authenticated) => authenticated,
            Err(error) => return Ok(Err(error)),
        }
    };
    c2s::signed_in(server, &authenticated).await;
    let bare = format!("{}@{}", authenticated.username, server.domain);
    let mut success = Success {
        additional: std::mem::take(&mut authenticated.additional),
        inline: Vec::new(),
    };
    if let Some(agent) = agent
        && fast_enabled(server)
        && let Some(token) = fast_token(server, request, &authenticated, agent, token_login).await
    {
        success.inline.push(token);
    }
    // XEP-0386 §3.2, XEP-0198 §9.2: a resumption first; the bind only if it fails.
    if let Some(resume) = request.get_child("resume", SM) {
        match c2s::resumable_slot::<L>(
            server,
            &authenticated.username,
            authenticated.device.as_deref(),
            resume,
        )
        .await
        {
            Ok((permit, h)) => {
                return Ok(Ok(SignedIn::Done(Negotiated::Resume {
                    permit,
                    h,
                    sasl2: Some(Box::new(success)),
                })));
            }
            Err(not_resumed) => success.inline.push(not_resumed.element()),
        }
    }
    if let Some(request) = request.get_child("bind", ns::BIND2)
        && let Some(bound) = bind(server, link, &authenticated, agent, request, &success).await?
    {
        return Ok(Ok(SignedIn::Done(Negotiated::Bound(bound))));
    }
    link.element(&success.element(&bare, []));
    link.element(&c2s::bind_features(server, true, true));
    link.flush().await.map_err(|_| Ended::Gone)?;
    Ok(Ok(SignedIn::Continue(authenticated)))
}

/// XEP-0386 §3.2: binds a resource and turns on what the client asked for
/// inline, then answers `<success/>` with `<bound/>` and the stream features.
/// `None` when no resource could be bound (too many sessions): the client
/// is authenticated and may bind the classic way, and is told so by the
/// features that follow.
async fn bind<L: Link>(
    server: &Arc<Server>,
    link: &mut L,
    authenticated: &Authenticated,
    agent: Option<&str>,
    request: &Element,
    success: &Success,
) -> Result<Option<c2s::Bound>, Ended> {
    let username = &authenticated.username;
    let device = authenticated.device.as_deref();
    let mac = match agent {
        Some(_) => server
            .secrets
            .mac(&server.store, crate::secrets::Secret::Resource)
            .await
            .inspect_err(|error| tracing::warn!(%error, "reading the resource secret"))
            .ok(),
        None => None,
    };
    let resource = resource_for(mac, username, request.child_text("tag", ns::BIND2), agent);
    // A resource made from the client's id is that client's: its older
    // session goes (XEP-0386 §3.2 "SHOULD terminate earlier sessions").
    let Ok(mut bound) =
        c2s::bind_announced(server, username, device, Some(&resource), agent.is_some()).await
    else {
        return Ok(None);
    };
    let mut results = Element::new(ns::BIND2, "bound");
    // "the state of the user's message archive at the precise time of binding".
    match crate::features::mam::metadata_of(server, username).await {
        Ok(metadata) => results.push_child(metadata),
        Err(error) => tracing::warn!(%error, "reading archive metadata for a bind"),
    }
    if request.has_child("enable", CARBONS) {
        // XEP-0386 §3.2: carbons "MUST succeed"; nothing to answer.
        server
            .router
            .update(&bound.jid, bound.id, |entry| entry.carbons = true);
    }
    // The session "must begin in that state".
    bound.inactive = request.has_child("inactive", crate::csi::CSI);
    let sm = request.get_child("enable", SM).map(|enable| {
        let (enabled, inline) = session::enable(
            server,
            enable,
            &bound.jid.to_bare(),
            std::any::TypeId::of::<(L::Reader, L::Writer)>(),
            device,
        );
        results.push_child(enabled);
        inline
    });
    let sm_enabled = sm.is_some();
    bound.unbind.resume = sm
        .as_ref()
        .and_then(|sm| sm.resume.as_ref())
        .map(|(id, _)| id.clone());
    bound.sm = sm;
    link.element(&success.element(bound.jid.as_str(), [results]));
    link.element(&c2s::bind_features(server, false, !sm_enabled));
    // A link gone now drops `bound`, which unbinds it.
    link.flush().await.map_err(|_| Ended::Gone)?;
    tracing::debug!(jid = %bound.jid, "resource bound inline");
    Ok(Some(bound))
}

/// XEP-0386 §3.2.1: the client's tag, then an id that is the same each time
/// this client (its user-agent id) binds, so that it stays one device in the
/// inbox log. The user-agent id itself is not shown ("MUST NOT be exposed"):
/// the id is an HMAC of it under a server secret (`mac`), so it can't be
/// linked to the user-agent id by anyone who learns that. Without a
/// user-agent id (or the secret), a random one.
fn resource_for(
    mac: Option<Hmac<Sha256>>,
    username: &str,
    tag: Option<String>,
    agent: Option<&str>,
) -> String {
    let id = match (mac, agent) {
        (Some(mut mac), Some(agent)) => {
            mac.update(username.as_bytes());
            mac.update(b"\0");
            mac.update(agent.as_bytes());
            mac.finalize().into_bytes()[..6]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect()
        }
        _ => crate::random_id(12),
    };
    // A tag that could not be part of a resource is left out.
    let tag = tag
        .map(|tag| tag.trim().to_owned())
        .filter(|tag| !tag.is_empty() && tag.len() <= 64)
        .filter(|tag| kith_proto::FullJid::new(&format!("a@b/{tag}")).is_ok());
    match tag {
        Some(tag) => format!("{tag}/{id}"),
        None => id,
    }
}

/// A login with a FAST token: when the client's newest token was issued, and
/// when the client last signed in with its password or device credential.
#[derive(Clone, Copy, Debug)]
struct TokenLogin {
    issued_micros: i64,
    signed_in_micros: i64,
}

/// When a chain of FAST logins begun at `signed_in` (a password or device
/// credential login) ends: `fast_chain_secs` later (never when 0), so that a
/// token, once stolen, can't be renewed for ever.
fn chain_end(server: &Server, signed_in: i64) -> i64 {
    match server.config.limits.fast_chain_secs {
        0 => i64::MAX,
        secs => signed_in.saturating_add(crate::secs_to_micros(secs)),
    }
}

/// Checks an HT-SHA-256-NONE initial response against the tokens of the
/// client `agent` (XEP-0484 §5.1: the newest first; using it retires the one
/// before it): who it is, and the login's [`TokenLogin`].
async fn fast_login(
    server: &Server,
    agent: &str,
    initial: Option<&[u8]>,
) -> Result<(Authenticated, TokenLogin), SaslError> {
    // HT is client-first: nothing to challenge with.
    let message = HtInitiator::parse(initial.ok_or(SaslError::MalformedRequest)?)?;
    // The authcid is the username; some clients send the bare JID.
    let suffix = format!("@{}", server.domain);
    let authcid = match message.authcid.len().checked_sub(suffix.len()) {
        Some(at)
            if message.authcid.is_char_boundary(at)
                && message.authcid[at..].eq_ignore_ascii_case(&suffix) =>
        {
            &message.authcid[..at]
        }
        _ => message.authcid,
    };
    let username = crate::accounts::normalize_username(authcid, &server.domain)
        .map_err(|_| SaslError::NotAuthorized)?;
    let unavailable = |error: kith_store::StoreError| {
        tracing::error!(%error, "reading a FAST token and its account");
        SaslError::TemporaryAuthFailure
    };
    let tokens = server
        .store
        .fast_tokens(&username, agent)
        .await
        .map_err(unavailable)?
        .filter(|tokens| tokens.mechanism == HT_SHA_256_NONE)
        .ok_or(SaslError::NotAuthorized)?;
    // Still the same password, and the device credential (if it was one) still
    // there: either change ends the client's tokens.
    let account_key = match server
        .store
        .credentials(&username)
        .await
        .map_err(unavailable)?
    {
        Some(stored) => account_key(&stored),
        None => return Err(SaslError::NotAuthorized),
    };
    if account_key != tokens.account_key {
        return Err(SaslError::NotAuthorized);
    }
    if let Some(device) = &tokens.device {
        match server
            .store
            .device_credential(device)
            .await
            .map_err(unavailable)?
        {
            Some(row) if row.owner == username => {}
            _ => return Err(SaslError::NotAuthorized),
        }
    }
    let now = crate::now_micros();
    for (token, expires, newest) in [
        (&tokens.new, tokens.new_expires_micros, true),
        (&tokens.current, tokens.current_expires_micros, false),
    ] {
        if token.is_empty() {
            continue;
        }
        let Some(responder) = message.verify(token) else {
            continue;
        };
        // §4.2: a token no longer valid is "credentials-expired"; the client
        // then signs in with its password. So is one whose chain has ended
        // (issued before the limit was lowered).
        if expires <= now || chain_end(server, tokens.signed_in_micros) <= now {
            return Err(SaslError::CredentialsExpired);
        }
        if newest
            && let Err(error) = server
                .store
                .promote_fast_token(&username, agent, token)
                .await
        {
            tracing::warn!(%error, "retiring the FAST token before this one");
        }
        let authenticated = Authenticated {
            username,
            device: tokens.device.clone(),
            additional: responder,
            account_key,
        };
        let login = TokenLogin {
            issued_micros: tokens.issued_micros,
            signed_in_micros: tokens.signed_in_micros,
        };
        return Ok((authenticated, login));
    }
    Err(SaslError::NotAuthorized)
}

/// The `<token/>` for `<success/>`, if one is due (XEP-0484 §3.3, §3.5,
/// §3.6): asked for with `<request-token/>`, or the token just used is old
/// enough to be replaced. `<fast invalidate='true'/>` ends the token used,
/// and then only an explicit request brings a new one.
async fn fast_token(
    server: &Server,
    request: &Element,
    authenticated: &Authenticated,
    agent: &str,
    token_login: Option<TokenLogin>,
) -> Option<Element> {
    let now = crate::now_micros();
    let requested = request
        .get_child("request-token", ns::FAST)
        .and_then(|r| r.get_attr("mechanism"))
        == Some(HT_SHA_256_NONE);
    let invalidate = request
        .get_child("fast", ns::FAST)
        .and_then(|fast| fast.get_attr("invalidate"))
        .is_some_and(|v| matches!(v, "true" | "1"));
    let mut due = requested;
    if let Some(login) = token_login {
        if invalidate {
            if let Err(error) = server
                .store
                .revoke_fast_tokens(&authenticated.username, agent)
                .await
            {
                tracing::warn!(%error, "invalidating a FAST token");
            }
        } else {
            let rotate = crate::secs_to_micros(server.config.limits.fast_rotate_secs);
            due |= now.saturating_sub(login.issued_micros) >= rotate;
        }
    }
    if !due {
        return None;
    }
    // A token issued to a FAST login lasts no longer than its chain.
    let signed_in_micros = token_login.map_or(now, |login| login.signed_in_micros);
    let expires_micros = now
        .saturating_add(crate::secs_to_micros(server.config.limits.fast_token_secs))
        .min(chain_end(server, signed_in_micros));
    if expires_micros <= now {
        return None;
    }
    // 190 bits from the CSPRNG (the HT draft asks for at least 128).
    let token = crate::random_id(32);
    let stored = server
        .store
        .issue_fast_token(&kith_store::NewFastToken {
            owner: &authenticated.username,
            agent,
            device: authenticated.device.as_deref(),
            mechanism: HT_SHA_256_NONE,
            account_key: &authenticated.account_key,
            token: &token,
            expires_micros,
            issued_micros: now,
            signed_in_micros,
        })
        .await;
    if let Err(error) = stored {
        tracing::warn!(%error, "storing a FAST token");
        return None;
    }
    Some(
        Element::new(ns::FAST, "token")
            .attr("token", token)
            .attr("expiry", crate::datetime::format_datetime(expires_micros)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_keeps_its_resource_without_showing_its_id() {
        let agent = "d4565fa7-4d72-4749-b3d3-740edbf87770";
        let keyed = |secret: &[u8]| Hmac::<Sha256>::new_from_slice(secret).ok();
        let resource = |secret: &[u8], user: &str, tag: Option<&str>, agent: Option<&str>| {
            resource_for(keyed(secret), user, tag.map(str::to_owned), agent)
        };
        let first = resource(b"one", "juliet", Some("Phone"), Some(agent));
        assert_eq!(
            first,
            resource(b"one", "juliet", Some("Phone"), Some(agent))
        );
        assert!(first.starts_with("Phone/"), "{first}");
        assert!(!first.contains("d4565fa7"), "{first}");
        assert_ne!(first, resource(b"one", "romeo", Some("Phone"), Some(agent)));
        // Another server's secret: another id (it is not a plain hash).
        assert_ne!(
            first,
            resource(b"two", "juliet", Some("Phone"), Some(agent))
        );
        // No id, or no secret: a new resource each time.
        assert_ne!(
            resource(b"one", "juliet", None, None),
            resource(b"one", "juliet", None, None)
        );
        assert_ne!(
            resource_for(None, "juliet", None, Some(agent)),
            resource_for(None, "juliet", None, Some(agent))
        );
        // A tag that can't be part of a resource is dropped.
        assert!(!resource(b"one", "juliet", Some(" "), Some(agent)).contains('/'));
    }

    #[test]
    fn user_agent_ids_must_look_like_uuids() {
        let request = |id: &str| {
            Element::new(ns::SASL2, "authenticate")
                .child(Element::new(ns::SASL2, "user-agent").attr("id", id))
        };
        let good = "d4565fa7-4d72-4749-b3d3-740edbf87770";
        assert_eq!(user_agent(&request(good)), Some(good));
        for bad in [
            "",
            "not-a-uuid",
            "d4565fa7-4d72-4749-b3d3-740edbf8777g",
            "x".repeat(500).as_str(),
        ] {
            assert_eq!(user_agent(&request(bad)), None, "{bad}");
        }
    }
}
