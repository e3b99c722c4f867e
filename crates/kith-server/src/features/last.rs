//! XEP-0012 Last Activity, answered by the server: its uptime (§5, Server and
//! Component Query) and, on a user's behalf, how long ago the user logged out and
//! with which status (§3, Offline User Query).
//!
//! Queries to a user's full JID (§4, Online User Query) are routed to that client
//! like any other IQ and never reach this module.

use kith_proto::{BareJid, Element, StanzaError, ns};
use kith_store::Subscription;

use super::roster::internal;
use super::{Request, Response, Target};
use crate::Server;
use crate::session::Session;

/// Answers `<query xmlns='jabber:iq:last'/>`.
pub(crate) async fn handle(session: &mut Session, request: &Request<'_>) -> Response {
    if request.set {
        // §2: only IQ-get is defined.
        return Err(StanzaError::bad_request());
    }
    let server = session.server.clone();
    match &request.target {
        Target::Server => Ok(Some(last_element(server.uptime_secs(), None))),
        // The requester itself is online right now.
        Target::OwnAccount => Ok(Some(last_element(0, None))),
        Target::Account(other) => account_last(&server, other, &session.bare).await,
    }
}

/// §3 for the bare JID `owner`, asked by `requester`.
async fn account_last(server: &Server, owner: &BareJid, requester: &BareJid) -> Response {
    // §3: only someone allowed to see the user's presence may learn this; everyone
    // else gets <forbidden/>, whether or not the account exists.
    // The user's `last_seen` privacy setting and blocking (either way) narrow
    // this further, with the same answer.
    if !may_see_presence(server, owner, requester).await?
        || !super::privacy::may_see(server, owner, requester, super::privacy::Field::LastSeen)
            .await?
    {
        return Err(StanzaError::forbidden());
    }
    // §3: with a resource online the answer is "0 seconds ago". Only *available*
    // resources count: a connected client that has not sent presence is invisible
    // to contacts, and this answer must not reveal it.
    let online = server.router.with_sessions(owner.as_str(), |sessions| {
        sessions.iter().any(|s| s.available())
    });
    let online = online
        || match &server.cluster {
            Some(cluster) => cluster.online(owner.as_str()).await,
            None => false,
        };
    if online {
        return Ok(Some(last_element(0, None)));
    }
    let username = owner.node().map_or("", |n| n.as_str());
    match server
        .store
        .last_activity(username)
        .await
        .map_err(internal)?
    {
        Some((at_secs, status)) => {
            let now_secs = crate::now_micros() / 1_000_000;
            let seconds = u64::try_from(now_secs.saturating_sub(at_secs)).unwrap_or(0);
            Ok(Some(last_element(
                seconds,
                Some(status).filter(|s| !s.is_empty()),
            )))
        }
        // No logout recorded: the account has never been used (or does not exist).
        None => Err(StanzaError::item_not_found()),
    }
}

/// Whether `viewer` may see `owner`'s presence: `owner`'s roster has a subscription
/// of `from` or `both` for `viewer` (RFC 6121 §4.1). It is the owner's roster that
/// decides (XEP-0030 §8 words it the same way: "the target having a presence
/// subscription to the requesting entity of type both or from"), not the viewer's.
///
/// A missing account has no roster, so the answer is `false` and callers reply
/// the same way for "no such user" and "not allowed", which keeps accounts from
/// being harvested.
pub(crate) async fn may_see_presence(
    server: &Server,
    owner: &BareJid,
    viewer: &BareJid,
) -> Result<bool, StanzaError> {
    if owner == viewer {
        return Ok(true);
    }
    let Some(username) = owner.node().filter(|_| server.is_local_user(owner)) else {
        return Ok(false);
    };
    let item = server
        .store
        .roster_item(username.as_str(), viewer.as_str())
        .await
        .map_err(internal)?;
    Ok(item
        .is_some_and(|item| matches!(item.subscription, Subscription::From | Subscription::Both)))
}

/// `<query xmlns='jabber:iq:last' seconds='…'>status</query>` (§2).
fn last_element(seconds: u64, status: Option<String>) -> Element {
    let query = Element::new(ns::LAST, "query").attr("seconds", seconds.to_string());
    match status {
        Some(status) => query.text(status),
        None => query,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_element_carries_the_status_as_text() {
        assert_eq!(
            last_element(903, Some("Heading Home".into())).to_xml(ns::CLIENT),
            "<query xmlns='jabber:iq:last' seconds='903'>Heading Home</query>"
        );
        assert_eq!(
            last_element(0, None).to_xml(ns::CLIENT),
            "<query xmlns='jabber:iq:last' seconds='0'/>"
        );
    }
}
