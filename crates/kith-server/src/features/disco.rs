//! XEP-0030 Service Discovery: what the server is and supports (§3 disco#info,
//! §4 disco#items), and the server's answers on behalf of accounts (§3.1, §4.1,
//! with the access rules of §8 Security Considerations).
//!
//! [`server_features`] is the one list of what kith advertises. It names only
//! features that work end to end; a feature goes in when its module lands.
//! XEP-0115 entity capabilities need nothing here while the server advertises no
//! caps node of its own (every `node` is unknown, see [`info`]).

use kith_proto::{BareJid, Element, StanzaError, ns};

use super::{Request, Response, Target};
use crate::Server;
use crate::session::Session;

/// XEP-0160 / XEP-0013: messages to offline users are stored and delivered later.
const MSGOFFLINE: &str = "msgoffline";

/// Features of the server that are always on. `jabber:iq:register` depends on the
/// configuration and is added by [`server_features`].
const SERVER_FEATURES: &[&str] = &[
    ns::DISCO_INFO,
    ns::DISCO_ITEMS,
    ns::PING,     // XEP-0199
    ns::TIME,     // XEP-0202
    ns::VERSION,  // XEP-0092
    ns::LAST,     // XEP-0012
    ns::VCARD,    // XEP-0054
    ns::PRIVATE,  // XEP-0049
    ns::BLOCKING, // XEP-0191
    ns::ROSTER,   // RFC 6121 §2
    ns::SID,      // XEP-0359: the server stamps <stanza-id/> on messages it delivers
    MSGOFFLINE,
];

/// Features of an account's bare JID (§3.1): the server answers disco for it.
const ACCOUNT_FEATURES: &[&str] = &[ns::DISCO_INFO, ns::DISCO_ITEMS];

/// Every feature the server advertises, sorted (XEP-0115 §5.1 hashes them in this
/// order, and a stable order keeps answers comparable).
pub(crate) fn server_features(registration_enabled: bool) -> Vec<&'static str> {
    let mut features = SERVER_FEATURES.to_vec();
    if registration_enabled {
        // XEP-0077 §10 (Determining Support).
        features.push(ns::REGISTER);
    }
    features.sort_unstable();
    features
}

/// Answers `<query xmlns='http://jabber.org/protocol/disco#info'/>`.
pub(crate) async fn info(session: &mut Session, request: &Request<'_>) -> Response {
    if request.set {
        // §3.1: disco is IQ-get only.
        return Err(StanzaError::bad_request());
    }
    let node = request.payload.get_attr("node");
    let server = session.server.clone();
    match &request.target {
        Target::Server => {
            no_node(node)?;
            let identity = identity("server", "im").attr("name", "kith");
            Ok(Some(info_element(
                identity,
                &server_features(server.config.registration_enabled()),
            )))
        }
        Target::OwnAccount => {
            no_node(node)?;
            Ok(Some(account_info()))
        }
        Target::Account(other) => {
            account_access(&server, other, &session.bare).await?;
            no_node(node)?;
            Ok(Some(account_info()))
        }
    }
}

/// Answers `<query xmlns='http://jabber.org/protocol/disco#items'/>`: no items yet
/// (no components, no PEP nodes).
pub(crate) fn items(_session: &mut Session, request: &Request<'_>) -> Response {
    if request.set {
        // §4.1: disco is IQ-get only.
        return Err(StanzaError::bad_request());
    }
    let node = request.payload.get_attr("node");
    let query = Element::new(ns::DISCO_ITEMS, "query");
    match &request.target {
        Target::Server | Target::OwnAccount => {
            no_node(node)?;
            Ok(Some(query))
        }
        // §8 rule 2: for another account the answer is an empty result, whether or
        // not it exists and whatever the node, so nothing about it leaks.
        Target::Account(_) => Ok(Some(query.attr_opt("node", node))),
    }
}

/// §8 rule 1: disco#info on another user's bare JID is answered only if the
/// requester may see that user's presence; otherwise — and when the account does
/// not exist — with <service-unavailable/>, so accounts cannot be harvested.
async fn account_access(
    server: &Server,
    owner: &BareJid,
    requester: &BareJid,
) -> Result<(), StanzaError> {
    if super::last::may_see_presence(server, owner, requester).await? {
        Ok(())
    } else {
        Err(StanzaError::service_unavailable())
    }
}

/// §3.2: we publish no info nodes, so any `node` is unknown.
fn no_node(node: Option<&str>) -> Result<(), StanzaError> {
    match node {
        None => Ok(()),
        Some(_) => Err(StanzaError::item_not_found()),
    }
}

/// §3.1: an account answered by its server is `account/registered`.
fn account_info() -> Element {
    info_element(identity("account", "registered"), ACCOUNT_FEATURES)
}

fn identity(category: &str, kind: &str) -> Element {
    Element::new(ns::DISCO_INFO, "identity")
        .attr("category", category)
        .attr("type", kind)
}

fn info_element(identity: Element, features: &[&str]) -> Element {
    let mut query = Element::new(ns::DISCO_INFO, "query").child(identity);
    for feature in features {
        query.push_child(Element::new(ns::DISCO_INFO, "feature").attr("var", *feature));
    }
    query
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn server_features_are_sorted_and_unique() {
        for registration in [false, true] {
            let features = server_features(registration);
            let mut sorted = features.clone();
            sorted.sort_unstable();
            assert_eq!(features, sorted);
            assert_eq!(
                features.iter().collect::<HashSet<_>>().len(),
                features.len()
            );
        }
    }

    #[test]
    fn registration_is_advertised_only_when_enabled() {
        assert!(server_features(true).contains(&ns::REGISTER));
        assert!(!server_features(false).contains(&ns::REGISTER));
    }

    #[test]
    fn server_advertises_what_the_dispatch_table_handles() {
        let features = server_features(false);
        for feature in [
            ns::DISCO_INFO,
            ns::DISCO_ITEMS,
            ns::PING,
            ns::TIME,
            ns::VERSION,
            ns::LAST,
            ns::VCARD,
            ns::PRIVATE,
            ns::BLOCKING,
            ns::ROSTER,
            ns::SID,
            "msgoffline",
        ] {
            assert!(features.contains(&feature), "{feature} missing");
        }
        // XEP-0203 delay stamps are a payload the server adds, not a feature.
        assert!(!features.contains(&ns::DELAY));
    }

    #[test]
    fn account_info_is_a_registered_account() {
        assert_eq!(
            account_info().to_xml(ns::CLIENT),
            "<query xmlns='http://jabber.org/protocol/disco#info'>\
             <identity category='account' type='registered'/>\
             <feature var='http://jabber.org/protocol/disco#info'/>\
             <feature var='http://jabber.org/protocol/disco#items'/></query>"
        );
    }

    #[test]
    fn any_node_is_unknown() {
        assert!(no_node(None).is_ok());
        assert_eq!(
            no_node(Some("http://jabber.org/protocol/commands")),
            Err(StanzaError::item_not_found())
        );
    }
}
