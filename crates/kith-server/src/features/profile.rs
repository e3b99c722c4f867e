//! The user profile over XMPP: display name (XEP-0172 User Nickname), about text
//! (XEP-0292 vCard4 over PEP, its NOTE), avatar (XEP-0084 User Avatar), and the
//! vCard-based avatar hash in presence (XEP-0153) kept in step with the PEP
//! avatar both ways (XEP-0398).
//!
//! Everything lives in PEP nodes (`pep/`); this module only knows their
//! payloads. [`profile_get`] and the setters are the interface a later HTTP
//! profile API calls: the setters publish through [`pep::publish`], so XMPP
//! contacts are notified exactly as if a client had published.

use std::sync::Arc;

use base64::Engine as _;
use kith_proto::stream::{Limits, parse_fragment};
use kith_proto::{BareJid, Element, StanzaError, ns};

use super::pep;
use super::roster::internal;
use crate::Server;

pub(crate) const NODE_NICK: &str = "http://jabber.org/protocol/nick";
pub(crate) const NODE_VCARD4: &str = "urn:xmpp:vcard4";
pub(crate) const NODE_AVATAR_METADATA: &str = "urn:xmpp:avatar:metadata";
const NS_VCARD4: &str = "urn:ietf:params:xml:ns:vcard-4.0";
const NS_VCARD_UPDATE: &str = "vcard-temp:x:update";

/// What a profile shows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Profile {
    pub nick: Option<String>,
    pub about: Option<String>,
    /// SHA-1 of the avatar image, lowercase hex (XEP-0084 §4.2 item id).
    pub avatar_hash: Option<String>,
    pub avatar_type: Option<String>,
}

/// `user`'s profile as stored, whatever the nodes' access models (the caller
/// applies its own privacy rules).
#[allow(dead_code)] // the HTTP profile API (issue 4) calls it
pub(crate) async fn profile_get(server: &Server, user: &str) -> Result<Profile, StanzaError> {
    let newest = |node: &'static str| async move {
        let items = server
            .store
            .pep_items(user, node, Some(1))
            .await
            .map_err(internal)?;
        Ok::<_, StanzaError>(
            items
                .into_iter()
                .next()
                .and_then(|item| parse_fragment(item.payload.as_bytes(), Limits::default()).ok()),
        )
    };
    let mut profile = Profile::default();
    if let Some(nick) = newest(NODE_NICK).await? {
        profile.nick = Some(nick.text_content()).filter(|n| !n.is_empty());
    }
    if let Some(vcard) = newest(NODE_VCARD4).await? {
        profile.about = about_of(&vcard);
    }
    if let Some(metadata) = newest(NODE_AVATAR_METADATA).await?
        && let Some(info) = metadata.get_child("info", NODE_AVATAR_METADATA)
    {
        profile.avatar_hash = info.get_attr("id").map(str::to_owned);
        profile.avatar_type = info.get_attr("type").map(str::to_owned);
    }
    Ok(profile)
}

fn about_of(vcard: &Element) -> Option<String> {
    vcard
        .get_child("note", NS_VCARD4)
        .and_then(|note| note.child_text("text", NS_VCARD4))
        .filter(|t| !t.is_empty())
}

/// Publishes `user`'s nickname (XEP-0172 §4).
#[allow(dead_code)] // the HTTP profile API (issue 4) calls it
pub(crate) async fn set_nick(
    server: &Arc<Server>,
    user: &BareJid,
    nick: &str,
) -> Result<(), StanzaError> {
    let payload = Element::new(NODE_NICK, "nick").text(nick);
    pep::publish(
        server,
        user,
        user.as_str(),
        NODE_NICK,
        Some("current"),
        &payload,
        None,
    )
    .await?;
    Ok(())
}

/// Publishes `user`'s about text as the NOTE of their vCard4 (XEP-0292 §3),
/// keeping its other properties.
#[allow(dead_code)] // the HTTP profile API (issue 4) calls it
pub(crate) async fn set_about(
    server: &Arc<Server>,
    user: &BareJid,
    about: &str,
) -> Result<(), StanzaError> {
    let username = user.node().map_or("", |n| n.as_str());
    let current = server
        .store
        .pep_items(username, NODE_VCARD4, Some(1))
        .await
        .map_err(internal)?
        .into_iter()
        .next()
        .and_then(|item| parse_fragment(item.payload.as_bytes(), Limits::default()).ok())
        .filter(|v| v.is("vcard", NS_VCARD4));
    let mut vcard = current.unwrap_or_else(|| Element::new(NS_VCARD4, "vcard"));
    vcard.remove_children("note", NS_VCARD4);
    vcard.push_child(
        Element::new(NS_VCARD4, "note").child(Element::new(NS_VCARD4, "text").text(about)),
    );
    pep::publish(
        server,
        user,
        user.as_str(),
        NODE_VCARD4,
        Some("current"),
        &vcard,
        None,
    )
    .await?;
    Ok(())
}

/// Publishes an avatar (XEP-0084 §4.1 data, then §4.2 metadata) and returns its
/// hash. The vCard follows (XEP-0398) through [`avatar_published`].
pub(crate) async fn set_avatar(
    server: &Arc<Server>,
    user: &BareJid,
    image: &[u8],
    mime: &str,
) -> Result<String, StanzaError> {
    let hash = sha1_hex(image);
    let data = Element::new(pep::NODE_AVATAR_DATA, "data")
        .text(base64::engine::general_purpose::STANDARD.encode(image));
    pep::publish(
        server,
        user,
        user.as_str(),
        pep::NODE_AVATAR_DATA,
        Some(&hash),
        &data,
        None,
    )
    .await?;
    let metadata = Element::new(NODE_AVATAR_METADATA, "metadata").child(
        Element::new(NODE_AVATAR_METADATA, "info")
            .attr("id", hash.clone())
            .attr("bytes", image.len().to_string())
            .attr("type", mime),
    );
    pep::publish(
        server,
        user,
        user.as_str(),
        NODE_AVATAR_METADATA,
        Some(&hash),
        &metadata,
        None,
    )
    .await?;
    Ok(hash)
}

fn sha1_hex(bytes: &[u8]) -> String {
    use sha1::{Digest, Sha1};
    Sha1::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The image in a vCard-temp `<PHOTO>`: its bytes and type (XEP-0153 §3.1).
pub(crate) fn vcard_photo(vcard: &Element) -> Option<(Vec<u8>, String)> {
    let photo = vcard.get_child("PHOTO", ns::VCARD)?;
    let binval: String = photo
        .child_text("BINVAL", ns::VCARD)?
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(binval)
        .ok()?;
    if bytes.is_empty() {
        return None;
    }
    let kind = photo
        .child_text("TYPE", ns::VCARD)
        .unwrap_or_else(|| "image/png".to_owned());
    Some((bytes, kind))
}

/// The XEP-0153 hash of a vCard's photo (SHA-1, hex), if it has one.
pub(crate) fn photo_hash(vcard: &Element) -> Option<String> {
    vcard_photo(vcard).map(|(bytes, _)| sha1_hex(&bytes))
}

/// XEP-0153 §4.1 / XEP-0398 §3: the server puts the user's current photo hash
/// into their available presence, replacing whatever the client put there.
/// With no photo known, the client's own `<x/>` (if any) is left alone. A user
/// who shows their photo to nobody sends no hash at all (it would tell every
/// contact when the hidden photo changes); "my contacts" is who gets the
/// broadcast anyway.
pub(crate) async fn stamp_presence(server: &Server, username: &str, presence: &mut Element) {
    let hash = server
        .store
        .vcard_photo_hash(username)
        .await
        .unwrap_or_else(|error| {
            tracing::warn!(%error, "reading the vCard photo hash");
            None
        });
    // Nothing in this presence tells of a photo: no need to read the setting
    // (most presences, and every login of a user without a photo).
    if hash.is_none() && !presence.has_child("x", NS_VCARD_UPDATE) {
        return;
    }
    let hidden = super::privacy::Settings::load(server, username)
        .await
        .is_ok_and(|settings| settings.profile_photo == super::privacy::Audience::Nobody);
    if hidden {
        presence.remove_children("x", NS_VCARD_UPDATE);
    } else if let Some(hash) = hash {
        presence.remove_children("x", NS_VCARD_UPDATE);
        presence.push_child(
            Element::new(NS_VCARD_UPDATE, "x")
                .child(Element::new(NS_VCARD_UPDATE, "photo").text(hash)),
        );
    }
}

/// The user set a vCard with this photo hash (XEP-0398 §4, vCard to PEP): the
/// PEP avatar follows, and presence carries the new hash.
pub(crate) async fn vcard_photo_changed(server: &Arc<Server>, user: &BareJid, vcard: &Element) {
    if let Some((image, mime)) = vcard_photo(vcard)
        && image.len() <= server.config.pep.max_avatar_bytes
        && let Err(error) = set_avatar(server, user, &image, &mime).await
    {
        tracing::warn!(?error, "publishing the vCard photo as PEP avatar");
    }
    super::presence::rebroadcast(server, user).await;
}

/// A new XEP-0084 metadata item was published (XEP-0398 §3, PEP to vCard): the
/// vCard PHOTO takes the image from the data node, and presence the new hash.
pub(crate) async fn avatar_published(server: &Arc<Server>, owner: &BareJid, metadata: &Element) {
    let username = owner.node().map_or("", |n| n.as_str());
    let info = metadata
        .elements()
        .find(|e| e.is("info", NODE_AVATAR_METADATA) && e.get_attr("url").is_none());
    let current = server.store.vcard_photo_hash(username).await.ok().flatten();
    let wanted = info.and_then(|i| i.get_attr("id")).map(str::to_owned);
    if current == wanted {
        // Already in step (e.g. the avatar came from the vCard).
        return;
    }
    let photo = match (info, &wanted) {
        (Some(info), Some(id)) => {
            let data = server
                .store
                .pep_items_by_id(username, pep::NODE_AVATAR_DATA, std::slice::from_ref(id))
                .await
                .ok()
                .and_then(|items| items.into_iter().next())
                .and_then(|item| parse_fragment(item.payload.as_bytes(), Limits::default()).ok());
            let Some(data) = data else {
                // The image is elsewhere (a URL) or not yet published: nothing to copy.
                return;
            };
            let kind = info.get_attr("type").unwrap_or("image/png").to_owned();
            Some((data.text_content(), kind))
        }
        _ => None,
    };
    let stored = server.store.vcard(username).await.ok().flatten();
    let mut vcard = stored
        .and_then(|xml| parse_fragment(xml.as_bytes(), Limits::default()).ok())
        .unwrap_or_else(|| Element::new(ns::VCARD, "vCard"));
    vcard.remove_children("PHOTO", ns::VCARD);
    if let Some((binval, kind)) = photo {
        vcard.push_child(
            Element::new(ns::VCARD, "PHOTO")
                .child(Element::new(ns::VCARD, "TYPE").text(kind))
                .child(Element::new(ns::VCARD, "BINVAL").text(binval)),
        );
    }
    let hash = photo_hash(&vcard);
    if let Err(error) = server
        .store
        .set_vcard_with_photo(username, &vcard.to_xml(""), hash.as_deref())
        .await
    {
        tracing::warn!(%error, "copying the PEP avatar into the vCard");
        return;
    }
    super::presence::rebroadcast(server, owner).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn photo_hash_is_sha1_of_the_decoded_image() {
        let vcard = Element::new(ns::VCARD, "vCard").child(
            Element::new(ns::VCARD, "PHOTO")
                .child(Element::new(ns::VCARD, "TYPE").text("image/png"))
                // "abc", base64 with a line break as vCards often have.
                .child(Element::new(ns::VCARD, "BINVAL").text("YW\nJj")),
        );
        assert_eq!(
            photo_hash(&vcard).as_deref(),
            Some("a9993e364706816aba3e25717850c26c9cd0d89d")
        );
        assert_eq!(photo_hash(&Element::new(ns::VCARD, "vCard")), None);
    }

    #[test]
    fn about_is_the_vcard4_note() {
        let vcard = Element::new(NS_VCARD4, "vcard").child(
            Element::new(NS_VCARD4, "note")
                .child(Element::new(NS_VCARD4, "text").text("Hey there")),
        );
        assert_eq!(about_of(&vcard).as_deref(), Some("Hey there"));
    }
}
