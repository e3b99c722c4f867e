//! XEP-0049 Private XML Storage: a user keeps arbitrary XML on the server, keyed
//! by namespace, readable and writable only by the user's own resources (§4).
//!
//! Storage format: for each namespace, the elements of that namespace from the last
//! set, wrapped in one serialised `<query xmlns='jabber:iq:private'>` (§2.3 allows
//! several elements of one namespace in a set). A set replaces everything stored
//! under the namespaces it carries and leaves the others alone.

use std::collections::HashMap;

use kith_proto::error::StanzaErrorCondition;
use kith_proto::stream::{Limits, parse_fragment};
use kith_proto::{Element, StanzaError, ns};

use super::roster::internal;
use super::{Request, Response, Target};
use crate::Server;
use crate::session::Session;

/// The largest amount stored under one namespace, serialised.
const MAX_BYTES_PER_NAMESPACE: usize = 128 * 1024;
/// The longest namespace accepted as a storage key.
const MAX_NAMESPACE_BYTES: usize = 1024;

/// Answers `<query xmlns='jabber:iq:private'/>` gets and sets.
pub(crate) async fn handle(session: &mut Session, request: &Request<'_>) -> Response {
    if request.target != Target::OwnAccount {
        // §2.3: another user's private data gets <forbidden/> (preferred over
        // <service-unavailable/>); §4: only the user's own resources may touch it.
        return Err(StanzaError::forbidden());
    }
    let server = session.server.clone();
    if request.set {
        set(&server, &session.username, request.payload).await
    } else {
        get(&server, &session.username, request.payload).await
    }
}

/// §2.2: a get names one namespace by an (empty) child element of it.
async fn get(server: &Server, username: &str, query: &Element) -> Response {
    let mut children = query.elements();
    let (Some(wanted), None) = (children.next(), children.next()) else {
        // §2.3: a get without a child SHOULD get "Bad Format" (<bad-request/>); and a
        // client MUST NOT ask for more than one namespace at a time.
        return Err(StanzaError::bad_request().with_text("ask for exactly one namespace"));
    };
    check_namespace(&wanted.ns)?;
    let mut result = Element::new(ns::PRIVATE, "query");
    match server
        .store
        .private_xml(username, &wanted.ns)
        .await
        .map_err(internal)?
    {
        Some(xml) => {
            let stored = parse_fragment(xml.as_bytes(), Limits::default()).map_err(|error| {
                tracing::error!(user = username, %error, "stored private XML does not parse");
                StanzaError::internal()
            })?;
            result.children = stored.children;
        }
        // Nothing stored: the requested element comes back empty, as existing
        // servers do (§2.3 leaves this case open) and clients expect.
        None => {
            let mut empty = Element::new(&wanted.ns, &wanted.name);
            empty.attrs = wanted.attrs.clone();
            result.push_child(empty);
        }
    }
    Ok(Some(result))
}

/// §2.2: a set stores each child under its namespace.
async fn set(server: &Server, username: &str, query: &Element) -> Response {
    let groups = group_by_namespace(query)?;
    for (namespace, xml) in &groups {
        server
            .store
            .set_private_xml(username, namespace, xml)
            .await
            .map_err(internal)?;
    }
    Ok(None)
}

/// The children of a set, grouped by namespace (in order of first appearance) and
/// serialised in their stored form. Checks everything before anything is stored.
fn group_by_namespace(query: &Element) -> Result<Vec<(String, String)>, StanzaError> {
    let mut order: Vec<&str> = Vec::new();
    let mut groups: HashMap<&str, Element> = HashMap::new();
    for child in query.elements() {
        check_namespace(&child.ns)?;
        let group = groups.entry(child.ns.as_str()).or_insert_with(|| {
            order.push(child.ns.as_str());
            Element::new(ns::PRIVATE, "query")
        });
        group.push_child(child.clone());
    }
    if order.is_empty() {
        // §2.3: at least one child element MUST be included, else "Not Acceptable".
        return Err(not_acceptable("store at least one element"));
    }
    let mut serialised = Vec::with_capacity(order.len());
    for namespace in order {
        let Some(group) = groups.get(namespace) else {
            continue;
        };
        // `""` as the parent namespace: the stored wrapper declares its namespace.
        let xml = group.to_xml("");
        if xml.len() > MAX_BYTES_PER_NAMESPACE {
            return Err(not_acceptable(format!(
                "more than {MAX_BYTES_PER_NAMESPACE} bytes for one namespace"
            )));
        }
        serialised.push((namespace.to_owned(), xml));
    }
    Ok(serialised)
}

/// §2.3: namespaces reserved by the protocol itself (`jabber:*`,
/// `http://jabber.org/*`, `vcard-temp`) may be refused with "Not Acceptable"; kith
/// refuses them so that no client mistakes private storage for the real protocol.
/// This also catches elements without a namespace of their own, which inherit
/// `jabber:iq:private`.
fn check_namespace(namespace: &str) -> Result<(), StanzaError> {
    let reserved = namespace.starts_with("jabber:")
        || namespace.starts_with("http://jabber.org/")
        || namespace == ns::VCARD;
    if reserved {
        return Err(not_acceptable(format!(
            "the namespace {namespace} is reserved"
        )));
    }
    if namespace.is_empty() || namespace.len() > MAX_NAMESPACE_BYTES {
        return Err(not_acceptable("the element needs a namespace of its own"));
    }
    Ok(())
}

fn not_acceptable(text: impl Into<String>) -> StanzaError {
    StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(children: Vec<Element>) -> Element {
        let mut query = Element::new(ns::PRIVATE, "query");
        for child in children {
            query.push_child(child);
        }
        query
    }

    #[test]
    fn reserved_namespaces_are_refused() {
        for namespace in [
            "jabber:iq:private",
            "jabber:client",
            "http://jabber.org/protocol/muc",
            "vcard-temp",
            "",
        ] {
            assert!(
                check_namespace(namespace).is_err(),
                "{namespace:?} accepted"
            );
        }
        assert!(check_namespace("storage:bookmarks").is_ok());
        assert!(check_namespace("exodus:prefs").is_ok());
    }

    #[test]
    fn set_groups_children_by_namespace() {
        let prefs = Element::new("exodus:prefs", "exodus")
            .child(Element::new("exodus:prefs", "defaultnick").text("Hamlet"));
        let bookmarks = Element::new("storage:bookmarks", "storage");
        let more_prefs = Element::new("exodus:prefs", "other");
        let groups =
            group_by_namespace(&query(vec![prefs, bookmarks, more_prefs])).unwrap_or_default();
        assert_eq!(
            groups,
            vec![
                (
                    "exodus:prefs".to_owned(),
                    "<query xmlns='jabber:iq:private'><exodus xmlns='exodus:prefs'><defaultnick>Hamlet</defaultnick></exodus><other xmlns='exodus:prefs'/></query>".to_owned()
                ),
                (
                    "storage:bookmarks".to_owned(),
                    "<query xmlns='jabber:iq:private'><storage xmlns='storage:bookmarks'/></query>".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn stored_groups_parse_back() {
        let prefs = Element::new("exodus:prefs", "exodus")
            .child(Element::new("exodus:prefs", "defaultnick").text("Hamlet"));
        let groups = group_by_namespace(&query(vec![prefs.clone()])).unwrap_or_default();
        let parsed = groups
            .first()
            .and_then(|(_, xml)| parse_fragment(xml.as_bytes(), Limits::default()).ok());
        assert_eq!(
            parsed.map(|p| p.children),
            Some(query(vec![prefs]).children)
        );
    }

    #[test]
    fn set_without_children_or_with_a_reserved_namespace_is_refused() {
        assert!(group_by_namespace(&query(vec![])).is_err());
        let bad = query(vec![
            Element::new("storage:bookmarks", "storage"),
            Element::new(ns::PRIVATE, "oops"),
        ]);
        assert!(group_by_namespace(&bad).is_err());
    }
}
