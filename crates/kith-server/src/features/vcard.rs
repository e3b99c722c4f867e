//! XEP-0054 vcard-temp: each user stores one vCard on the server (§3.2), reads it
//! back (§3.1), and anyone may read another user's (§3.3).
//!
//! The vCard is kept as the serialised `<vCard xmlns='vcard-temp'>` element, with its
//! namespace declared, and parsed back on every read; the server never looks inside.

use kith_proto::stream::{Limits, parse_fragment};
use std::sync::Arc;

use kith_proto::{BareJid, Element, StanzaError, ns};

use super::roster::internal;
use super::{Request, Response, Target};
use crate::Server;
use crate::session::Session;

/// The largest vCard stored, serialised. Avatars belong in XEP-0084 or
/// HTTP upload; a vCard with an inline photo still fits comfortably.
const MAX_VCARD_BYTES: usize = 128 * 1024;

/// Answers `<vCard xmlns='vcard-temp'/>` gets and sets.
pub(crate) async fn handle(session: &mut Session, request: &Request<'_>) -> Response {
    let server = session.server.clone();
    match (&request.target, request.set) {
        // §3.1: with no vCard stored, an empty <vCard/> result is allowed.
        (Target::OwnAccount, false) => Ok(Some(
            stored(&server, &session.username)
                .await?
                .unwrap_or_else(|| Element::new(ns::VCARD, "vCard")),
        )),
        // §3.3: no vCard and no such user MUST get the same error,
        // <service-unavailable/>, so that accounts cannot be harvested.
        (Target::Account(other), false) => {
            // A block (either way) looks like no vCard at all.
            if server.blocked_between(other, &session.bare).await {
                return Err(StanzaError::service_unavailable());
            }
            let username = other.node().map_or("", |n| n.as_str());
            let mut vcard = stored(&server, username)
                .await?
                .ok_or_else(StanzaError::service_unavailable)?;
            // The `profile_photo` privacy setting governs the PHOTO (and so the
            // XEP-0153 hash a client would compute from it).
            let photo = super::privacy::Field::ProfilePhoto;
            if !super::privacy::may_see(&server, other, &session.bare, photo).await? {
                vcard.remove_children("PHOTO", ns::VCARD);
            }
            Ok(Some(vcard))
        }
        (Target::OwnAccount, true) => store(&server, &session.bare, request.payload).await,
        // §3.2: setting another user's vCard SHOULD get <forbidden/> or <not-allowed/>.
        (Target::Account(_), true) => Err(StanzaError::forbidden()),
        // The server has no vCard of its own (§3.3 notes it could).
        (Target::Server, false) => Err(StanzaError::service_unavailable()),
        (Target::Server, true) => Err(StanzaError::not_allowed()),
    }
}

/// The user's stored vCard, if any.
async fn stored(server: &Server, username: &str) -> Result<Option<Element>, StanzaError> {
    let Some(xml) = server.store.vcard(username).await.map_err(internal)? else {
        return Ok(None);
    };
    match parse_fragment(xml.as_bytes(), Limits::default()) {
        Ok(vcard) => Ok(Some(vcard)),
        Err(error) => {
            tracing::error!(user = username, %error, "stored vCard does not parse");
            Err(StanzaError::internal())
        }
    }
}

/// §3.2: replaces the user's vCard with `vcard` (the whole of it: there are no
/// partial updates). A changed photo (XEP-0153) updates the PEP avatar and
/// presence (`profile.rs`).
async fn store(server: &Arc<Server>, user: &BareJid, vcard: &Element) -> Response {
    let username = user.node().map_or("", |n| n.as_str());
    let xml = serialise(vcard)?;
    let hash = super::profile::photo_hash(vcard);
    let before = server
        .store
        .vcard_photo_hash(username)
        .await
        .map_err(internal)?;
    server
        .store
        .set_vcard_with_photo(username, &xml, hash.as_deref())
        .await
        .map_err(internal)?;
    if before != hash {
        super::profile::vcard_photo_changed(server, user, vcard).await;
    }
    Ok(None)
}

/// The stored form of a vCard, refused when it is over [`MAX_VCARD_BYTES`].
fn serialise(vcard: &Element) -> Result<String, StanzaError> {
    // `""` as the parent namespace: the stored element declares its own namespace,
    // so it parses back on its own.
    let xml = vcard.to_xml("");
    if xml.len() > MAX_VCARD_BYTES {
        return Err(
            StanzaError::new(kith_proto::error::StanzaErrorCondition::NotAcceptable)
                .with_text(format!("the vCard is larger than {MAX_VCARD_BYTES} bytes")),
        );
    }
    Ok(xml)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_vcards_parse_back_the_same() {
        let vcard = Element::new(ns::VCARD, "vCard")
            .child(Element::new(ns::VCARD, "FN").text("Juliet <Capulet> & co"))
            .child(Element::new(ns::VCARD, "NICKNAME").text("jc"));
        let xml = serialise(&vcard).ok();
        let parsed = xml.and_then(|xml| parse_fragment(xml.as_bytes(), Limits::default()).ok());
        assert_eq!(parsed, Some(vcard));
    }

    #[test]
    fn oversized_vcards_are_refused() {
        let photo = "A".repeat(MAX_VCARD_BYTES);
        let vcard =
            Element::new(ns::VCARD, "vCard").child(Element::new(ns::VCARD, "DESC").text(photo));
        let error = serialise(&vcard).err();
        assert_eq!(
            error.map(|e| e.condition),
            Some(kith_proto::error::StanzaErrorCondition::NotAcceptable)
        );
    }
}
