//! Privacy settings (WhatsApp's), enforced by the server: who sees a user's last
//! seen (XEP-0012), profile photo (XEP-0084 avatar nodes, the vCard-temp PHOTO of
//! XEP-0054 and the XEP-0153 hash in presence) and about text (the XEP-0292
//! vCard4 node), and whether their XEP-0333 read markers flow.
//!
//! Read and written over XMPP with a small namespace of our own,
//! `urn:kith:privacy:0` (an IQ on the user's own account):
//! `<privacy xmlns='urn:kith:privacy:0' last-seen='everyone|contacts|nobody'
//! profile-photo='…' about='…' read-receipts='true|false'/>`; a set changes only
//! the attributes it carries. The HTTP API (`api/privacy.rs`) is the same thing.
//!
//! Defaults are WhatsApp's: everyone sees last seen, photo and about; read
//! receipts on. "Contacts" means the user's roster has a subscription of `from`
//! or `both` for the viewer (the viewer sees the user's presence). Blocking
//! (XEP-0191), either way, hides all three whatever the settings say.

use std::sync::Arc;

use kith_proto::{BareJid, Element, StanzaError};
use kith_store::PrivacySettings;

use super::roster::internal;
use super::{Request, Response};
use crate::Server;
use crate::session::Session;

pub(crate) const NS: &str = "urn:kith:privacy:0";

/// Who may see one piece of a user's profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Audience {
    Everyone,
    Contacts,
    Nobody,
}

impl Audience {
    pub(crate) fn parse(text: &str) -> Option<Audience> {
        match text {
            "everyone" => Some(Audience::Everyone),
            "contacts" => Some(Audience::Contacts),
            "nobody" => Some(Audience::Nobody),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Audience::Everyone => "everyone",
            Audience::Contacts => "contacts",
            Audience::Nobody => "nobody",
        }
    }

    fn admits(self, is_contact: bool) -> bool {
        match self {
            Audience::Everyone => true,
            Audience::Contacts => is_contact,
            Audience::Nobody => false,
        }
    }
}

/// The parts of a profile a setting governs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    LastSeen,
    ProfilePhoto,
    About,
}

/// One user's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Settings {
    pub last_seen: Audience,
    pub profile_photo: Audience,
    pub about: Audience,
    pub read_receipts: bool,
}

impl Default for Settings {
    /// WhatsApp's defaults.
    fn default() -> Self {
        Settings {
            last_seen: Audience::Everyone,
            profile_photo: Audience::Everyone,
            about: Audience::Everyone,
            read_receipts: true,
        }
    }
}

impl Settings {
    /// `username`'s settings (the defaults when never set).
    pub(crate) async fn load(server: &Server, username: &str) -> Result<Settings, StanzaError> {
        let stored = server
            .store
            .privacy_settings(username)
            .await
            .map_err(internal)?;
        Ok(stored.map_or_else(Settings::default, |s| {
            let default = Settings::default();
            Settings {
                last_seen: Audience::parse(&s.last_seen).unwrap_or(default.last_seen),
                profile_photo: Audience::parse(&s.profile_photo).unwrap_or(default.profile_photo),
                about: Audience::parse(&s.about).unwrap_or(default.about),
                read_receipts: s.read_receipts,
            }
        }))
    }

    /// Stores the settings, which replace `before` (as loaded). When who sees
    /// the photo changed, the user's presence goes out again: its XEP-0153
    /// hash follows the setting (`profile::stamp_presence`).
    pub(crate) async fn save(
        &self,
        server: &Arc<Server>,
        username: &str,
        before: &Settings,
    ) -> Result<(), StanzaError> {
        let stored = PrivacySettings {
            last_seen: self.last_seen.as_str().to_owned(),
            profile_photo: self.profile_photo.as_str().to_owned(),
            about: self.about.as_str().to_owned(),
            read_receipts: self.read_receipts,
        };
        server
            .store
            .set_privacy_settings(username, &stored)
            .await
            .map_err(internal)?;
        if self.profile_photo != before.profile_photo
            && let Ok(user) = BareJid::new(&format!("{username}@{}", server.domain))
        {
            super::presence::rebroadcast(server, &user).await;
        }
        Ok(())
    }

    /// Whether a viewer (a contact or not; not blocked) may see `field`.
    pub(crate) fn admits(&self, field: Field, is_contact: bool) -> bool {
        let audience = match field {
            Field::LastSeen => self.last_seen,
            Field::ProfilePhoto => self.profile_photo,
            Field::About => self.about,
        };
        audience.admits(is_contact)
    }

    /// Applies one `name = value` change; `Err` names what is wrong.
    pub(crate) fn apply(&mut self, name: &str, value: &str) -> Result<(), String> {
        let audience = || {
            Audience::parse(value)
                .ok_or_else(|| format!("{name} must be everyone, contacts or nobody"))
        };
        match name {
            "last_seen" | "last-seen" => self.last_seen = audience()?,
            "profile_photo" | "profile-photo" => self.profile_photo = audience()?,
            "about" => self.about = audience()?,
            "read_receipts" | "read-receipts" => {
                self.read_receipts = match value {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(format!("{name} must be true or false")),
                }
            }
            _ => return Err(format!("unknown privacy setting {name}")),
        }
        Ok(())
    }

    fn to_element(self) -> Element {
        Element::new(NS, "privacy")
            .attr("last-seen", self.last_seen.as_str())
            .attr("profile-photo", self.profile_photo.as_str())
            .attr("about", self.about.as_str())
            .attr("read-receipts", self.read_receipts.to_string())
    }
}

/// The PEP nodes a setting governs: the avatar's (XEP-0084) by `profile_photo`,
/// the vCard4 (its NOTE is the about text, XEP-0292) by `about`.
pub(crate) fn node_field(node: &str) -> Option<Field> {
    match node {
        super::pep::NODE_AVATAR_DATA | super::profile::NODE_AVATAR_METADATA => {
            Some(Field::ProfilePhoto)
        }
        super::profile::NODE_VCARD4 => Some(Field::About),
        _ => None,
    }
}

/// Whether `viewer` may see `owner`'s `field`: always their own; never across a
/// block (either way); otherwise as `owner`'s setting says.
pub(crate) async fn may_see(
    server: &Server,
    owner: &BareJid,
    viewer: &BareJid,
    field: Field,
) -> Result<bool, StanzaError> {
    if owner == viewer {
        return Ok(true);
    }
    if server.blocked_between(owner, viewer).await {
        return Ok(false);
    }
    let username = owner.node().map_or("", |n| n.as_str());
    let settings = Settings::load(server, username).await?;
    let audience = match field {
        Field::LastSeen => settings.last_seen,
        Field::ProfilePhoto => settings.profile_photo,
        Field::About => settings.about,
    };
    Ok(match audience {
        Audience::Everyone => true,
        Audience::Nobody => false,
        Audience::Contacts => super::last::may_see_presence(server, owner, viewer).await?,
    })
}

/// Whether a read marker (XEP-0333 `<displayed/>`) from `from` may reach `to`:
/// only when both have read receipts on (WhatsApp: who turns them off neither
/// sends nor receives them). Users of other domains have no settings here.
pub(crate) async fn read_marker_allowed(server: &Server, from: &BareJid, to: &BareJid) -> bool {
    for user in [from, to] {
        let Some(node) = user.node().filter(|_| server.is_local_user(user)) else {
            continue;
        };
        match Settings::load(server, node.as_str()).await {
            Ok(settings) if settings.read_receipts => {}
            // Off, or unknown because the store failed: hold the marker back.
            _ => return false,
        }
    }
    true
}

/// Answers `<privacy xmlns='urn:kith:privacy:0'/>` on the user's own account.
pub(crate) async fn handle(session: &mut Session, request: &Request<'_>) -> Response {
    request.own_account_only()?;
    let server = session.server.clone();
    let mut settings = Settings::load(&server, &session.username).await?;
    if !request.set {
        return Ok(Some(settings.to_element()));
    }
    let before = settings;
    for (name, value) in &request.payload.attrs {
        settings
            .apply(name, value)
            .map_err(|text| StanzaError::bad_request().with_text(text))?;
    }
    settings.save(&server, &session.username, &before).await?;
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audiences_admit_as_named() {
        let mut settings = Settings::default();
        assert!(settings.admits(Field::LastSeen, false));
        settings.apply("last_seen", "contacts").unwrap();
        settings.apply("profile-photo", "nobody").unwrap();
        assert!(!settings.admits(Field::LastSeen, false));
        assert!(settings.admits(Field::LastSeen, true));
        assert!(!settings.admits(Field::ProfilePhoto, true));
        assert!(settings.admits(Field::About, false));
    }

    #[test]
    fn bad_values_are_refused() {
        let mut settings = Settings::default();
        assert!(settings.apply("about", "friends").is_err());
        assert!(settings.apply("read_receipts", "yes").is_err());
        assert!(settings.apply("mood", "everyone").is_err());
        assert_eq!(settings, Settings::default());
        settings.apply("read-receipts", "false").unwrap();
        assert!(!settings.read_receipts);
    }

    #[test]
    fn avatar_and_vcard4_nodes_are_governed() {
        assert_eq!(
            node_field("urn:xmpp:avatar:metadata"),
            Some(Field::ProfilePhoto)
        );
        assert_eq!(
            node_field("urn:xmpp:avatar:data"),
            Some(Field::ProfilePhoto)
        );
        assert_eq!(node_field("urn:xmpp:vcard4"), Some(Field::About));
        assert_eq!(node_field("http://jabber.org/protocol/nick"), None);
    }
}
