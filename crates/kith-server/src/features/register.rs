//! XEP-0077 In-Band Registration: creating an account before authenticating
//! (§3.1, with §3.1.1 Registration with a Server), and, once authenticated,
//! changing the password (§3.3) and cancelling the account (§3.2).
//!
//! Registration is a policy choice (§11 Security Considerations): it is off unless
//! the configuration enables it (on by default only for `localhost`), limited per
//! source address, and refused on an unencrypted link. Passwords are never logged.

use std::net::IpAddr;
use std::sync::Arc;

use kith_proto::error::StanzaErrorCondition;
use kith_proto::{BareJid, Element, StanzaError, StanzaErrorType, StreamErrorCondition, ns};
use kith_store::Subscription;

use super::roster::internal;
use super::{Request, Response, Target, result_for};
use crate::Server;
use crate::accounts::{self, AccountError};
use crate::session::Session;

const INSTRUCTIONS: &str = "Choose a username and password for use with this service.";

/// Answers a `jabber:iq:register` IQ received before authentication; the returned
/// element is the whole reply.
///
/// `secure` says whether the link is encrypted. Registration sends the password in
/// the clear inside the stream, so it needs TLS (§11); a loopback connection is
/// accepted too, since its bytes never leave the machine (local development, or a
/// proxy on the same host that terminates TLS).
pub(crate) async fn before_auth(
    server: &Arc<Server>,
    ip: IpAddr,
    secure: bool,
    iq: &Element,
) -> Element {
    match register(server, ip, secure || ip.to_canonical().is_loopback(), iq).await {
        Ok(payload) => result_for(iq, payload),
        Err(error) => error.reply_to(iq),
    }
}

async fn register(server: &Server, ip: IpAddr, encrypted: bool, iq: &Element) -> Response {
    let kind = iq.get_attr("type").unwrap_or("");
    if iq.get_attr("id").is_none() || !matches!(kind, "get" | "set") {
        // RFC 6120 §8.2.3. (An answer to a result or error is still wrong, but the
        // caller always writes a reply.)
        return Err(StanzaError::bad_request());
    }
    let mut payloads = iq.elements();
    let (Some(query), None) = (payloads.next(), payloads.next()) else {
        return Err(StanzaError::bad_request());
    };
    if !query.is("query", ns::REGISTER) {
        return Err(StanzaError::service_unavailable());
    }
    if !server.config.registration_enabled() {
        // §3.1: a host without in-band registration MUST answer the get with
        // <service-unavailable/>; a set anyway is refused as <not-allowed/>
        // (password sign-up is switched off by `[registration] methods`).
        return Err(if kind == "get" {
            StanzaError::service_unavailable()
        } else {
            StanzaError::not_allowed().with_text("password sign-up is not enabled on this server")
        });
    }
    if !encrypted {
        return Err(StanzaError::new(StanzaErrorCondition::PolicyViolation)
            .with_text("registration needs an encrypted connection"));
    }
    if kind == "get" {
        // §3.1: the fields to fill in.
        return Ok(Some(
            Element::new(ns::REGISTER, "query")
                .child(Element::new(ns::REGISTER, "instructions").text(INSTRUCTIONS))
                .child(Element::new(ns::REGISTER, "username"))
                .child(Element::new(ns::REGISTER, "password")),
        ));
    }
    if query.has_child("remove", ns::REGISTER) {
        // §3.2 error table: an IM server gets a cancellation from an entity that is
        // not registered (not authenticated) — <unexpected-request/>.
        return Err(StanzaError::new(StanzaErrorCondition::UnexpectedRequest)
            .with_text("authenticate before cancelling a registration"));
    }
    let (Some(raw_username), Some(password)) = (
        non_empty_child(query, "username"),
        non_empty_child(query, "password"),
    ) else {
        // §3.1: missing information, an empty password included, is <not-acceptable/>.
        return Err(not_acceptable("a username and a password are required"));
    };
    let username =
        accounts::normalize_username(&raw_username, &server.domain).map_err(account_error)?;
    if server.config.phone.enabled && username.bytes().all(|b| b.is_ascii_digit()) {
        // Phone accounts are named by their number's digits: nobody may take one here.
        return Err(not_acceptable(
            "names made only of digits are kept for phone-number accounts",
        ));
    }
    accounts::check_password(&password).map_err(account_error)?;
    // §3.1.1: the server decides how many registrations to allow. Every attempt that
    // reaches account creation counts, a taken username too, which also slows down
    // probing for existing accounts.
    if !server.registrations.try_acquire(ip) {
        tracing::info!(%ip, "registration refused: too many from this address");
        return Err(StanzaError::new(StanzaErrorCondition::ResourceConstraint)
            .with_type(StanzaErrorType::Wait)
            .with_text("too many registrations from your address; try again later"));
    }
    accounts::create(&server.store, &username, &password)
        .await
        .map_err(account_error)?;
    tracing::info!(%ip, user = %username, "account registered in-band");
    Ok(None)
}

/// Answers a `jabber:iq:register` IQ from an authenticated session: whether the
/// account is registered (§3.1), a password change (§3.3) or a cancellation (§3.2).
pub(crate) async fn after_auth(session: &mut Session, request: &Request<'_>) -> Response {
    match request.target {
        Target::Server | Target::OwnAccount => {}
        // §3.2 / §3.3: nobody manages another user's registration.
        Target::Account(_) => return Err(StanzaError::forbidden()),
    }
    let query = request.payload;
    if !request.set {
        // §3.1: an authenticated entity is registered; its password is not echoed.
        return Ok(Some(
            Element::new(ns::REGISTER, "query")
                .child(Element::new(ns::REGISTER, "registered"))
                .child(Element::new(ns::REGISTER, "username").text(session.username.clone())),
        ));
    }
    if query.has_child("remove", ns::REGISTER) {
        if query.elements().count() != 1 {
            // §3.2: <remove/> must be the only child.
            return Err(StanzaError::bad_request().with_text("<remove/> must be alone"));
        }
        return cancel(session).await;
    }
    change_password(session, query).await
}

/// §3.3: a new password for the session's own account.
async fn change_password(session: &mut Session, query: &Element) -> Response {
    if let Some(username) = query.child_text("username", ns::REGISTER) {
        let own = accounts::normalize_username(&username, &session.server.domain)
            .is_ok_and(|username| username == session.username);
        if !own {
            // §3.3 error table lists no condition for this; <bad-request/> as other
            // servers do.
            return Err(StanzaError::bad_request().with_text("that is not your username"));
        }
    }
    let Some(password) = non_empty_child(query, "password") else {
        // §3.3: an empty password MUST NOT replace the current one.
        return Err(StanzaError::bad_request().with_text("a non-empty password is required"));
    };
    accounts::set_password(&session.server.store, &session.username, &password)
        .await
        .map_err(account_error)?;
    tracing::info!(user = %session.username, "password changed in-band");
    Ok(None)
}

/// §3.2: deletes the account and everything it owns, takes it out of other users'
/// rosters, and ends all its sessions with a `<not-authorized/>` stream error.
///
/// Exactly one result reaches the client, and before the stream error (§3.2 shows
/// the result; the stream then ends): this returns `Ok(None)`, which
/// `iq_from_client` turns into the result queued on `session.replies`; the close
/// goes through the router into the session's queue. `session::run` writes
/// `replies` first and only then drains the queue, where it meets the close, so the
/// client reads the result, then the stream error.
async fn cancel(session: &mut Session) -> Response {
    let server = session.server.clone();
    let existed = delete_account(&server, &session.bare).await?;
    if !existed {
        // Deleted concurrently (another session, the admin CLI): the outcome the
        // client asked for, so still a result.
        tracing::debug!(user = %session.username, "account already gone when cancelling");
    }
    tracing::info!(user = %session.username, "account cancelled in-band");
    Ok(None)
}

/// Deletes an account and everything it owns, for XEP-0077 `<remove/>` and
/// `DELETE /api/v1/account` alike: it leaves other users' rosters (with
/// unavailable presence and roster pushes) and its groups, its uploads are
/// purged, its store rows go (roster, inbox log and archive, devices and
/// credentials, phone number, vCard, PEP, privacy settings, blocklist; push
/// registrations cascade), and every session ends with `<not-authorized/>`.
/// `false` if the account was already gone. A re-registration starts clean.
pub(crate) async fn delete_account(
    server: &Arc<Server>,
    bare: &BareJid,
) -> Result<bool, StanzaError> {
    let username = bare.node().map_or("", |n| n.as_str()).to_owned();
    remove_from_rosters(server, bare).await?;
    if let Err(error) = super::muc::account_deleted(server, bare.as_str()).await {
        tracing::warn!(?error, user = %username, "leaving the account's groups");
    }
    if let Some(upload) = &server.upload
        && let Err(error) = crate::upload::purge_with(&server.store, &upload.blobs, &username).await
    {
        // Whatever is left is swept as an orphan once the account is gone.
        tracing::warn!(%error, user = %username, "deleting the account's uploads");
    }
    let existed = server
        .store
        .delete_user(&username)
        .await
        .map_err(internal)?;
    server.forget(crate::cluster::CacheKind::Blocklist, &username);
    if let Some(cluster) = &server.cluster {
        cluster.deleted(bare.as_str());
    }
    server.router.close_user(
        bare.as_str(),
        StreamErrorCondition::NotAuthorized,
        "account removed",
    );
    Ok(existed)
}

/// §3.2: "cancel all existing presence subscriptions related to that entity". All
/// contacts are local: each roster naming the account loses that item (with a
/// roster push, RFC 6121 §2.1.6), and contacts that saw the account's presence get
/// its unavailable presence first.
async fn remove_from_rosters(server: &Arc<Server>, bare: &BareJid) -> Result<(), StanzaError> {
    let owners = server
        .store
        .roster_owners_of(bare.as_str())
        .await
        .map_err(internal)?;
    for owner in owners {
        let Ok(owner_jid) = BareJid::new(&format!("{owner}@{}", server.domain)) else {
            continue;
        };
        let item = server
            .store
            .roster_item(&owner, bare.as_str())
            .await
            .map_err(internal)?;
        if item
            .is_some_and(|item| matches!(item.subscription, Subscription::To | Subscription::Both))
        {
            super::presence::hide_from(server, bare, owner_jid.as_str()).await;
        }
        if let Some(version) = server
            .store
            .remove_roster_item(&owner, bare.as_str())
            .await
            .map_err(internal)?
        {
            let removed = Element::new(ns::ROSTER, "item")
                .attr("jid", bare.to_string())
                .attr("subscription", "remove");
            super::roster::push(server, &owner_jid, removed, version);
        }
    }
    Ok(())
}

/// The text of `<name/>`, if present and not empty. Never trimmed: spaces may be
/// part of a password, and a username with spaces is refused when normalised.
fn non_empty_child(query: &Element, name: &str) -> Option<String> {
    query
        .child_text(name, ns::REGISTER)
        .filter(|text| !text.is_empty())
}

fn account_error(error: AccountError) -> StanzaError {
    match error {
        // §3.1: the username is taken.
        AccountError::Exists(_) => StanzaError::new(StanzaErrorCondition::Conflict),
        AccountError::InvalidUsername(_) | AccountError::InvalidPassword => {
            not_acceptable(error.to_string())
        }
        AccountError::NoSuchUser(_) => StanzaError::new(StanzaErrorCondition::ItemNotFound),
        AccountError::Store(error) => internal(error),
    }
}

fn not_acceptable(text: impl Into<String>) -> StanzaError {
    StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_errors_map_to_xep_0077_conditions() {
        let condition = |error| account_error(error).condition;
        assert_eq!(
            condition(AccountError::Exists("juliet".into())),
            StanzaErrorCondition::Conflict
        );
        assert_eq!(
            condition(AccountError::InvalidUsername("a b".into())),
            StanzaErrorCondition::NotAcceptable
        );
        assert_eq!(
            condition(AccountError::InvalidPassword),
            StanzaErrorCondition::NotAcceptable
        );
    }

    #[test]
    fn empty_fields_count_as_missing() {
        let query = Element::new(ns::REGISTER, "query")
            .child(Element::new(ns::REGISTER, "username").text("juliet"))
            .child(Element::new(ns::REGISTER, "password"));
        assert_eq!(
            non_empty_child(&query, "username").as_deref(),
            Some("juliet")
        );
        assert_eq!(non_empty_child(&query, "password"), None);
        assert_eq!(non_empty_child(&query, "email"), None);
    }
}
