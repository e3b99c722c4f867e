//! XEP-0030 Service Discovery: what the server is and supports (§3 disco#info,
//! §4 disco#items), and the server's answers on behalf of accounts (§3.1, §4.1,
//! with the access rules of §8 Security Considerations).
//!
//! [`server_features`] is the one list of what kith advertises. It names only
//! features that work end to end; a feature goes in when its module lands.
//! XEP-0115 entity capabilities: the server advertises its own caps in the stream
//! features (§6.3, [`caps_element`]) and answers disco#info on `NODE#VER`.

use kith_proto::{BareJid, Element, StanzaError, ns};

use super::{Request, Response, Target};
use crate::Server;
use crate::session::Session;

/// XEP-0160 / XEP-0013: messages to offline users are stored and delivered later.
const MSGOFFLINE: &str = "msgoffline";

/// What the advertised features depend on in the configuration.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Offered {
    /// In-band registration (`jabber:iq:register`).
    pub registration: bool,
    /// The 1:1 archive (`[archive] enabled`): MAM on accounts, XEP-0359 ids.
    pub archive: bool,
    /// XEP-0357 push on accounts.
    pub push: bool,
    /// XEP-0215 service discovery for calls (`[calls] enabled`).
    pub calls: bool,
}

impl Offered {
    pub(crate) fn of(config: &crate::config::Config) -> Offered {
        Offered {
            registration: config.registration_enabled(),
            archive: config.archive.enabled,
            push: config.push.enabled,
            calls: config.calls.enabled,
        }
    }
}

/// Features of the server that are always on. `jabber:iq:register` depends on the
/// configuration and is added by [`server_features`].
const SERVER_FEATURES: &[&str] = &[
    ns::DISCO_INFO,
    ns::DISCO_ITEMS,
    ns::PING,                // XEP-0199
    ns::TIME,                // XEP-0202
    ns::VERSION,             // XEP-0092
    ns::LAST,                // XEP-0012
    ns::VCARD,               // XEP-0054
    ns::PRIVATE,             // XEP-0049
    ns::BLOCKING,            // XEP-0191
    ns::ROSTER,              // RFC 6121 §2
    super::carbons::CARBONS, // XEP-0280
    "urn:xmpp:sm:3",         // XEP-0198 (also a stream feature)
    MSGOFFLINE,
];

/// Features of an account's bare JID (§3.1): the server answers disco for it.
/// The archive lives there too, so its features are advertised there (XEP-0313
/// §7: "made to archiving JIDs (i.e. … users' bare JIDs)"), not on the server's
/// own JID, which hosts no archive.
const ACCOUNT_FEATURES: &[&str] = &[ns::DISCO_INFO, ns::DISCO_ITEMS];

/// The archive's features on an account, when there is one.
const ACCOUNT_ARCHIVE_FEATURES: &[&str] = &[
    super::mam::NS,          // XEP-0313
    super::mam::NS_EXTENDED, // XEP-0313 §7: before-id/after-id/ids, flip-page, metadata
    super::mam::NS_FULLTEXT, // XEP-0431
];

/// XEP-0357 §4: push support is advertised on the account, when enabled.
const ACCOUNT_PUSH_FEATURES: &[&str] = &[super::push::NS];

/// Every feature the server advertises, sorted (XEP-0115 §5.1 hashes them in this
/// order, and a stable order keeps answers comparable).
pub(crate) fn server_features(offered: Offered) -> Vec<&'static str> {
    let mut features = SERVER_FEATURES.to_vec();
    if offered.registration {
        // XEP-0077 §10 (Determining Support).
        features.push(ns::REGISTER);
    }
    if offered.archive {
        // XEP-0359 §6: the server stamps <stanza-id/> on messages it archives.
        features.push(ns::SID);
    }
    if offered.calls {
        // XEP-0215 §4.
        features.push(super::calls::NS);
    }
    features.sort_unstable();
    features
}

/// The XEP-0115 node naming this software.
pub(crate) const CAPS_NODE: &str = "https://kith.chat/caps";

/// The server's identity, the same in disco#info and in the caps hash.
const SERVER_IDENTITY: (&str, &str, &str) = ("server", "im", "kith");

/// XEP-0115 §5.1 verification string of the server's disco#info, base64 SHA-1.
pub(crate) fn caps_ver(offered: Offered) -> String {
    use base64::Engine as _;
    use sha1::{Digest, Sha1};
    let (category, kind, name) = SERVER_IDENTITY;
    let mut input = format!("{category}/{kind}//{name}<");
    for feature in server_features(offered) {
        input.push_str(feature);
        input.push('<');
    }
    base64::engine::general_purpose::STANDARD.encode(Sha1::digest(input.as_bytes()))
}

/// The `<c/>` stream feature announcing the server's capabilities (XEP-0115 §6.3).
pub(crate) fn caps_element(offered: Offered) -> Element {
    Element::new(ns::CAPS, "c")
        .attr("hash", "sha-1")
        .attr("node", CAPS_NODE)
        .attr("ver", caps_ver(offered))
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
            let offered = Offered::of(&server.config);
            // XEP-0115 §6.2: the caps node answers like the plain query, echoing it.
            let caps_node = format!("{CAPS_NODE}#{}", caps_ver(offered));
            if node.is_some_and(|n| n != caps_node) {
                return Err(StanzaError::item_not_found());
            }
            let (category, kind, name) = SERVER_IDENTITY;
            let identity = identity(category, kind).attr("name", name);
            let info = info_element(identity, &server_features(offered));
            Ok(Some(info.attr_opt("node", node)))
        }
        // XEP-0060 §5.3: a PEP node, for whoever may read it.
        Target::OwnAccount | Target::Account(_) if node.is_some() => {
            let owner = match &request.target {
                Target::Account(other) => other.clone(),
                _ => session.bare.clone(),
            };
            super::pep::node_info(&server, &owner, &session.bare, node.unwrap_or("")).await
        }
        Target::OwnAccount => Ok(Some(account_info(Offered::of(&server.config)))),
        Target::Account(other) => {
            account_access(&server, other, &session.bare).await?;
            Ok(Some(account_info(Offered::of(&server.config))))
        }
    }
}

/// Answers `<query xmlns='http://jabber.org/protocol/disco#items'/>`: for an
/// account, the PEP nodes the requester may read; for the server, its components
/// (the XEP-0363 upload service, the XEP-0045 group service) (XEP-0163 §… / XEP-0060 §5.2).
pub(crate) async fn items(session: &mut Session, request: &Request<'_>) -> Response {
    if request.set {
        // §4.1: disco is IQ-get only.
        return Err(StanzaError::bad_request());
    }
    let node = request.payload.get_attr("node");
    let query = Element::new(ns::DISCO_ITEMS, "query");
    let owner = match &request.target {
        Target::Server => {
            no_node(node)?;
            // XEP-0363 §3: the upload component is found among the server's items,
            // and so is the group chat service (XEP-0045 §6.1).
            let mut query = query;
            if let Some(item) = crate::upload::disco_item(&session.server) {
                query.push_child(item);
            }
            let server = &session.server;
            if let Some(muc) = server.muc.domain(server) {
                query.push_child(
                    Element::new(ns::DISCO_ITEMS, "item")
                        .attr("jid", muc)
                        .attr("name", "Groups"),
                );
            }
            return Ok(Some(query));
        }
        // §8 rule 2: for another account the answer is an empty result for any
        // node, whether or not it exists, so nothing about it leaks.
        Target::Account(_) if node.is_some() => return Ok(Some(query.attr_opt("node", node))),
        Target::OwnAccount => {
            no_node(node)?;
            session.bare.clone()
        }
        Target::Account(other) => other.clone(),
    };
    // A missing account has no nodes: the same empty answer.
    let mut query = query;
    for pep_node in super::pep::visible_nodes(&session.server, &owner, &session.bare).await? {
        let mut item = Element::new(ns::DISCO_ITEMS, "item")
            .attr("jid", owner.to_string())
            .attr("node", pep_node.node);
        if !pep_node.config.title.is_empty() {
            item.set_attr("name", pep_node.config.title);
        }
        query.push_child(item);
    }
    Ok(Some(query))
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

/// §3.1: an account answered by its server is `account/registered`, and a PEP
/// service (XEP-0163 §5: `pubsub/pep`).
fn account_info(offered: Offered) -> Element {
    let mut features = ACCOUNT_FEATURES.to_vec();
    if offered.archive {
        features.extend_from_slice(ACCOUNT_ARCHIVE_FEATURES);
    }
    if offered.push {
        features.extend_from_slice(ACCOUNT_PUSH_FEATURES);
    }
    features.extend_from_slice(super::pep::ACCOUNT_FEATURES);
    let mut info = info_element(identity("account", "registered"), &features);
    // The identities come first in the answer (§3.1 lists them before features).
    info.children
        .insert(1, kith_proto::Node::Element(identity("pubsub", "pep")));
    info
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
        for (registration, archive) in [(false, false), (true, false), (false, true), (true, true)]
        {
            let features = server_features(Offered {
                registration,
                archive,
                push: false,
                calls: false,
            });
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
        let registration = |registration| Offered {
            registration,
            ..Offered::default()
        };
        assert!(server_features(registration(true)).contains(&ns::REGISTER));
        assert!(!server_features(registration(false)).contains(&ns::REGISTER));
    }

    #[test]
    fn the_archive_is_advertised_only_when_enabled() {
        let archive = |archive| Offered {
            archive,
            ..Offered::default()
        };
        assert!(server_features(archive(true)).contains(&ns::SID));
        assert!(!server_features(archive(false)).contains(&ns::SID));
        let on_account = |offered| {
            account_info(offered)
                .elements()
                .any(|f| f.get_attr("var") == Some(super::super::mam::NS))
        };
        assert!(on_account(archive(true)));
        assert!(!on_account(archive(false)));
        assert_ne!(caps_ver(archive(true)), caps_ver(archive(false)));
    }

    #[test]
    fn server_advertises_what_the_dispatch_table_handles() {
        let features = server_features(Offered {
            archive: true,
            ..Offered::default()
        });
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
    fn account_info_is_a_registered_account_and_a_pep_service() {
        let xml = account_info(Offered {
            archive: true,
            ..Offered::default()
        })
        .to_xml(ns::CLIENT);
        assert!(
            xml.starts_with(
                "<query xmlns='http://jabber.org/protocol/disco#info'>\
                 <identity category='account' type='registered'/>\
                 <identity category='pubsub' type='pep'/>\
                 <feature var='http://jabber.org/protocol/disco#info'/>\
                 <feature var='http://jabber.org/protocol/disco#items'/>\
                 <feature var='urn:xmpp:mam:2'/>\
                 <feature var='urn:xmpp:mam:2#extended'/>\
                 <feature var='urn:xmpp:fulltext:0'/>"
            ),
            "{xml}"
        );
        for feature in [
            "http://jabber.org/protocol/pubsub#publish",
            "http://jabber.org/protocol/pubsub#publish-options",
            "http://jabber.org/protocol/pubsub#access-whitelist",
        ] {
            assert!(xml.contains(feature), "{feature} missing");
        }
    }

    #[test]
    fn push_is_advertised_on_the_account_when_enabled() {
        let push = |enabled| {
            account_info(Offered {
                push: enabled,
                ..Offered::default()
            })
            .elements()
            .any(|f| f.get_attr("var") == Some(super::super::push::NS))
        };
        assert!(push(true));
        assert!(!push(false));
    }

    /// The worked example of XEP-0115 §5.2 checks the hashing itself.
    #[test]
    fn caps_hash_matches_the_xep_example() {
        use base64::Engine as _;
        use sha1::{Digest, Sha1};
        let input = "client/pc//Exodus 0.9.1<http://jabber.org/protocol/caps<http://jabber.org/protocol/disco#info<http://jabber.org/protocol/disco#items<http://jabber.org/protocol/muc<";
        let ver = base64::engine::general_purpose::STANDARD.encode(Sha1::digest(input.as_bytes()));
        assert_eq!(ver, "QgayPKawpkPSDYmwT/WM94uAlu0=");
        let registration = |registration| Offered {
            registration,
            ..Offered::default()
        };
        assert_eq!(caps_ver(registration(true)).len(), 28);
        assert_ne!(caps_ver(registration(true)), caps_ver(registration(false)));
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
