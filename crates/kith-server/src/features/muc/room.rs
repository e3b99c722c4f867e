//! A room's state and rules as pure data (XEP-0045 §5): configuration,
//! affiliations, occupants and their roles, and the privilege checks of §5.1 and
//! §5.2. No I/O: `mod.rs` loads and saves it and turns decisions into stanzas.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kith_proto::StanzaError;
use kith_proto::error::StanzaErrorCondition;
use serde::{Deserialize, Serialize};

/// A long-lived association between a bare JID and a room (§5.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Affiliation {
    Outcast,
    None,
    Member,
    Admin,
    Owner,
}

impl Affiliation {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Affiliation::Outcast => "outcast",
            Affiliation::None => "none",
            Affiliation::Member => "member",
            Affiliation::Admin => "admin",
            Affiliation::Owner => "owner",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Affiliation> {
        Some(match text {
            "outcast" => Affiliation::Outcast,
            "none" => Affiliation::None,
            "member" => Affiliation::Member,
            "admin" => Affiliation::Admin,
            "owner" => Affiliation::Owner,
            _ => return None,
        })
    }

    /// Members, admins and owners: the group's members, who get every message.
    pub(crate) fn is_member(self) -> bool {
        self >= Affiliation::Member
    }
}

/// A temporary position of an occupant in the room (§5.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Role {
    None,
    Visitor,
    Participant,
    Moderator,
}

impl Role {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::None => "none",
            Role::Visitor => "visitor",
            Role::Participant => "participant",
            Role::Moderator => "moderator",
        }
    }

    pub(crate) fn parse(text: &str) -> Option<Role> {
        Some(match text {
            "none" => Role::None,
            "visitor" => Role::Visitor,
            "participant" => Role::Participant,
            "moderator" => Role::Moderator,
            _ => return None,
        })
    }
}

/// Who may see occupants' real JIDs (`muc#roomconfig_whois`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Whois {
    Moderators,
    Anyone,
}

/// The room configuration (§10.2, `muc#roomconfig`). Serialised as JSON into
/// the store. The defaults are a WhatsApp group: persistent, members-only,
/// hidden, real JIDs visible to all, only admins edit the group info or add
/// members, and members see history from when they joined.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct RoomConfig {
    pub name: String,
    pub description: String,
    pub persistent: bool,
    pub public: bool,
    pub members_only: bool,
    /// An announcement group: only moderators (admins, owners) may speak; other
    /// occupants are visitors (§7.4).
    pub moderated: bool,
    /// Whether participants (not only moderators) may change the subject.
    pub change_subject: bool,
    pub whois: Whois,
    /// Whether members (not only admins) may invite, i.e. add members (§7.8.2).
    pub allow_invites: bool,
    /// The most occupants at once; 0 = no limit beyond the server's.
    pub max_users: u32,
    /// A new member sees the room's history from when they joined only.
    pub history_from_join: bool,
}

impl RoomConfig {
    pub(crate) fn group_defaults(history_from_join: bool) -> RoomConfig {
        RoomConfig {
            name: String::new(),
            description: String::new(),
            persistent: true,
            public: false,
            members_only: true,
            moderated: false,
            change_subject: false,
            whois: Whois::Anyone,
            allow_invites: false,
            max_users: 0,
            history_from_join,
        }
    }
}

impl Default for RoomConfig {
    fn default() -> Self {
        RoomConfig::group_defaults(true)
    }
}

/// One occupant: a nickname with one or more sessions of the same user.
#[derive(Clone, Debug)]
pub(crate) struct Occupant {
    /// The user's bare JID.
    pub bare: String,
    /// The full JIDs of the user's sessions in the room under this nick.
    pub sessions: Vec<String>,
    pub role: Role,
    /// XEP-0421: stable per user and room.
    pub occupant_id: String,
    /// The presence payload the occupant last sent (children only).
    pub presence: kith_proto::Element,
}

/// A room in memory.
#[derive(Debug)]
pub(crate) struct Room {
    pub jid: String,
    pub config: RoomConfig,
    pub subject: String,
    pub subject_by: String,
    /// bare JID → (affiliation, since micros); `None` is never stored.
    pub affiliations: HashMap<String, (Affiliation, i64)>,
    /// nick → occupant.
    pub occupants: BTreeMap<String, Occupant>,
    /// The origin-ids of the room's latest messages (shared with the commit
    /// callbacks that record them).
    pub recent: Arc<Recent>,
}

/// The XEP-0359 origin-ids of a room's latest stored messages, each keyed by
/// its sender (`deliver::origin_key`) and mapped to the archive id the room gave it, so that a resend
/// (after a reconnect, or a forwarding timeout in a cluster) is stored once.
/// Bounded: the newest [`RecentIds::MAX`].
#[derive(Debug, Default)]
pub(crate) struct Recent(Mutex<RecentIds>);

impl Recent {
    pub(crate) fn lock(&self) -> MutexGuard<'_, RecentIds> {
        // Every change leaves the ids consistent: a panic elsewhere can't break them.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What [`Recent`] guards.
#[derive(Debug, Default)]
pub(crate) struct RecentIds {
    /// Filled from the room's log, on the first message with an origin-id
    /// after the room was loaded.
    pub seeded: bool,
    order: VecDeque<String>,
    ids: HashMap<String, String>,
}

impl RecentIds {
    /// Most origin-ids remembered per room.
    pub const MAX: usize = 1024;

    /// The archive id of the stored message with this key.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.ids.get(key).map(String::as_str)
    }

    /// Remembers a stored message, forgetting the oldest beyond [`RecentIds::MAX`].
    pub fn insert(&mut self, key: String, archive_id: String) {
        if self.ids.contains_key(&key) {
            return;
        }
        self.order.push_back(key.clone());
        self.ids.insert(key, archive_id);
        while self.order.len() > Self::MAX {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
    }
}

impl Room {
    pub(crate) fn affiliation(&self, bare: &str) -> Affiliation {
        self.affiliations
            .get(bare)
            .map_or(Affiliation::None, |(affiliation, _)| *affiliation)
    }

    /// When `bare` became a member (their history starts there).
    pub(crate) fn member_since(&self, bare: &str) -> Option<i64> {
        self.affiliations
            .get(bare)
            .filter(|(affiliation, _)| affiliation.is_member())
            .map(|(_, since)| *since)
    }

    /// The bare JIDs of all members (member, admin, owner), sorted.
    pub(crate) fn members(&self) -> Vec<&str> {
        let mut members: Vec<&str> = self
            .affiliations
            .iter()
            .filter(|(_, (affiliation, _))| affiliation.is_member())
            .map(|(jid, _)| jid.as_str())
            .collect();
        members.sort_unstable();
        members
    }

    pub(crate) fn member_count(&self) -> usize {
        self.affiliations
            .values()
            .filter(|(affiliation, _)| affiliation.is_member())
            .count()
    }

    /// The nick under which this session is an occupant.
    pub(crate) fn nick_of(&self, full: &str) -> Option<&str> {
        self.occupants
            .iter()
            .find(|(_, occupant)| occupant.sessions.iter().any(|s| s == full))
            .map(|(nick, _)| nick.as_str())
    }

    /// The nick of this session, which must be in the room: §7.4 / §7.5 answer
    /// anyone else `<not-acceptable/>`.
    pub(crate) fn occupant_nick(&self, full: &str) -> Result<String, StanzaError> {
        self.nick_of(full).map(str::to_owned).ok_or_else(|| {
            StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text("join the room first")
        })
    }

    /// The role of the occupant this session is (`None` if it is not in the room).
    pub(crate) fn role_of(&self, full: &str) -> Role {
        self.nick_of(full)
            .and_then(|nick| self.occupants.get(nick))
            .map_or(Role::None, |occupant| occupant.role)
    }

    /// The default role of a user with this affiliation (§5.1.2; `None` for
    /// outcasts, who may not enter).
    pub(crate) fn default_role(&self, affiliation: Affiliation) -> Role {
        match affiliation {
            Affiliation::Owner | Affiliation::Admin => Role::Moderator,
            Affiliation::Outcast => Role::None,
            // An announcement group: members listen, admins speak.
            _ if self.config.moderated => Role::Visitor,
            _ => Role::Participant,
        }
    }

    /// §7.2: may this user enter the room under `nick`?
    pub(crate) fn check_entry(
        &self,
        bare: &str,
        nick: &str,
        max_occupants: usize,
    ) -> Result<(), StanzaError> {
        let affiliation = self.affiliation(bare);
        // §7.2.7: banned users are refused.
        if affiliation == Affiliation::Outcast {
            return Err(StanzaError::forbidden().with_text("you are banned from this room"));
        }
        // §7.2.6: members-only rooms admit members only.
        if self.config.members_only && !affiliation.is_member() {
            return Err(StanzaError::new(StanzaErrorCondition::RegistrationRequired)
                .with_type(kith_proto::StanzaErrorType::Auth)
                .with_text("this group is for members only"));
        }
        // §7.2.9: a nick held by somebody else.
        if let Some(holder) = self.occupants.get(nick)
            && holder.bare != bare
        {
            return Err(StanzaError::new(StanzaErrorCondition::Conflict)
                .with_text("that nickname is in use"));
        }
        // §7.2.10: the room is full (owners and admins may still enter).
        let limit = match self.config.max_users {
            0 => max_occupants,
            n => (n as usize).min(max_occupants),
        };
        if self.occupants.len() >= limit
            && !self.occupants.contains_key(nick)
            && affiliation < Affiliation::Admin
        {
            return Err(StanzaError::service_unavailable().with_text("the room is full"));
        }
        Ok(())
    }

    /// §9 / §10: may `actor` give `target` (currently `current`) the affiliation
    /// `new`? Owners may do anything; admins manage members and outcasts below
    /// them; members may add members when the room allows invites.
    pub(crate) fn may_set_affiliation(
        &self,
        actor: Affiliation,
        current: Affiliation,
        new: Affiliation,
    ) -> bool {
        match actor {
            Affiliation::Owner => true,
            Affiliation::Admin => current < Affiliation::Admin && new < Affiliation::Admin,
            Affiliation::Member => {
                self.config.allow_invites
                    && current == Affiliation::None
                    && new == Affiliation::Member
            }
            _ => false,
        }
    }

    /// §8.2: may an occupant with `actor` role and affiliation change the role of
    /// one with `target` affiliation? Moderators act on those below admin.
    pub(crate) fn may_set_role(actor: (Role, Affiliation), target: Affiliation) -> bool {
        actor.0 == Role::Moderator && (target < Affiliation::Admin || actor.1 == Affiliation::Owner)
    }

    /// §7.4 / §8.1: who may change the subject.
    pub(crate) fn may_change_subject(&self, role: Role) -> bool {
        role == Role::Moderator || (self.config.change_subject && role == Role::Participant)
    }

    /// Whether real JIDs are shown to an occupant with this role.
    pub(crate) fn shows_jids_to(&self, role: Role) -> bool {
        self.config.whois == Whois::Anyone || role == Role::Moderator
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room() -> Room {
        Room {
            jid: "g@conference.localhost".into(),
            config: RoomConfig::default(),
            subject: String::new(),
            subject_by: String::new(),
            affiliations: HashMap::from([
                ("owner@x".to_owned(), (Affiliation::Owner, 1)),
                ("member@x".to_owned(), (Affiliation::Member, 2)),
                ("banned@x".to_owned(), (Affiliation::Outcast, 3)),
            ]),
            occupants: BTreeMap::new(),
            recent: Arc::default(),
        }
    }

    fn condition(result: Result<(), StanzaError>) -> &'static str {
        result.err().map_or("ok", |e| e.condition.as_str())
    }

    #[test]
    fn entry_rules_of_a_members_only_room() {
        let mut room = room();
        assert_eq!(condition(room.check_entry("member@x", "m", 100)), "ok");
        assert_eq!(
            condition(room.check_entry("stranger@x", "s", 100)),
            "registration-required"
        );
        assert_eq!(
            condition(room.check_entry("banned@x", "b", 100)),
            "forbidden"
        );
        room.occupants.insert(
            "m".into(),
            Occupant {
                bare: "member@x".into(),
                sessions: vec!["member@x/a".into()],
                role: Role::Participant,
                occupant_id: "o".into(),
                presence: kith_proto::Element::new("jabber:client", "presence"),
            },
        );
        assert_eq!(condition(room.check_entry("owner@x", "m", 100)), "conflict");
        // Another session of the same user may share the nick.
        assert_eq!(condition(room.check_entry("member@x", "m", 100)), "ok");
        room.config.members_only = false;
        assert_eq!(
            condition(room.check_entry("stranger@x", "s", 1)),
            "service-unavailable"
        );
        assert_eq!(condition(room.check_entry("owner@x", "o", 1)), "ok");
    }

    #[test]
    fn affiliation_privileges() {
        let mut room = room();
        use Affiliation::*;
        assert!(room.may_set_affiliation(Owner, Admin, None));
        assert!(room.may_set_affiliation(Admin, None, Member));
        assert!(!room.may_set_affiliation(Admin, Owner, None));
        assert!(!room.may_set_affiliation(Admin, Member, Admin));
        assert!(!room.may_set_affiliation(Member, None, Member));
        room.config.allow_invites = true;
        assert!(room.may_set_affiliation(Member, None, Member));
        assert!(!room.may_set_affiliation(Member, Member, None));
        assert!(!room.may_set_affiliation(None, None, Member));
    }

    #[test]
    fn announcement_groups_make_members_visitors() {
        let mut room = room();
        assert_eq!(room.default_role(Affiliation::Member), Role::Participant);
        room.config.moderated = true;
        assert_eq!(room.default_role(Affiliation::Member), Role::Visitor);
        assert_eq!(room.default_role(Affiliation::Admin), Role::Moderator);
        assert!(!room.may_change_subject(Role::Participant));
        assert!(room.may_change_subject(Role::Moderator));
    }

    #[test]
    fn config_round_trips_through_json() {
        let config = RoomConfig {
            name: "Team".into(),
            moderated: true,
            ..RoomConfig::default()
        };
        let text = serde_json::to_string(&config).unwrap();
        assert_eq!(serde_json::from_str::<RoomConfig>(&text).unwrap(), config);
        // Unknown or missing keys fall back to the defaults.
        assert_eq!(
            serde_json::from_str::<RoomConfig>("{}").unwrap(),
            RoomConfig::default()
        );
    }

    #[test]
    fn recent_origin_ids_keep_the_newest_and_the_first_archive_id() {
        let mut recent = RecentIds::default();
        recent.insert("a\n1".into(), "first".into());
        recent.insert("a\n1".into(), "second".into());
        assert_eq!(
            recent.get("a\n1"),
            Some("first"),
            "a resend keeps the original"
        );
        for i in 0..RecentIds::MAX {
            recent.insert(format!("b\n{i}"), i.to_string());
        }
        assert_eq!(
            recent.get("a\n1"),
            None,
            "the oldest is forgotten past the bound"
        );
        assert_eq!(recent.get("b\n0"), Some("0"));
        assert_eq!(recent.ids.len(), RecentIds::MAX);
        assert_eq!(recent.order.len(), RecentIds::MAX);
    }
}
