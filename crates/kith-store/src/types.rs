//! Plain data types exchanged with the store.

use std::fmt;
use std::str::FromStr;

use crate::error::StoreError;

/// One SCRAM secret (RFC 5802): what the server keeps instead of a password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramSecret {
    /// The salt given to the client.
    pub salt: Vec<u8>,
    /// PBKDF2 iteration count.
    pub iterations: u32,
    /// `H(ClientKey)`.
    pub stored_key: Vec<u8>,
    /// `HMAC(SaltedPassword, "Server Key")`.
    pub server_key: Vec<u8>,
}

/// The SCRAM secrets of one account, one per supported hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredCredentials {
    /// SCRAM-SHA-1 secret.
    pub sha1: ScramSecret,
    /// SCRAM-SHA-256 secret.
    pub sha256: ScramSecret,
}

/// Roster subscription state (RFC 6121 §2.1.2.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum Subscription {
    /// Neither side is subscribed.
    #[default]
    None,
    /// The owner receives the contact's presence.
    To,
    /// The contact receives the owner's presence.
    From,
    /// Both directions.
    Both,
}

impl Subscription {
    /// The protocol spelling: `"none"`, `"to"`, `"from"` or `"both"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Subscription::None => "none",
            Subscription::To => "to",
            Subscription::From => "from",
            Subscription::Both => "both",
        }
    }

    /// Parses the protocol spelling; `None` for anything else.
    pub fn parse(s: &str) -> Option<Subscription> {
        match s {
            "none" => Some(Subscription::None),
            "to" => Some(Subscription::To),
            "from" => Some(Subscription::From),
            "both" => Some(Subscription::Both),
            _ => None,
        }
    }
}

impl fmt::Display for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error returned by [`Subscription::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown subscription state {0:?}")]
pub struct ParseSubscriptionError(pub String);

impl FromStr for Subscription {
    type Err = ParseSubscriptionError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Subscription::parse(s).ok_or_else(|| ParseSubscriptionError(s.to_owned()))
    }
}

/// One roster item of one owner (RFC 6121 §2.1).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct RosterItem {
    /// The contact's bare JID (local or remote).
    pub contact: String,
    /// Display name chosen by the owner.
    pub name: Option<String>,
    /// Subscription state.
    pub subscription: Subscription,
    /// Outbound subscription request pending ("Pending Out").
    pub ask: bool,
    /// Inbound request received, not yet answered ("Pending In"; redelivered at login).
    pub pending_in: bool,
    /// Pre-approved inbound subscription (RFC 6121 §3.4).
    pub approved: bool,
    /// Group names, in the order given (duplicates and empty names survive a round trip).
    pub groups: Vec<String>,
}

impl RosterItem {
    /// Whether the row only records an unanswered inbound subscription request
    /// (RFC 6121 §3.1.3: such a request is not a roster item; it is not shown,
    /// and [`RosterCap::requests`] bounds these rows on their own).
    pub fn is_request_only(&self) -> bool {
        self.subscription == Subscription::None
            && !self.ask
            && self.pending_in
            && self.name.is_none()
            && self.groups.is_empty()
    }
}

/// What one roster may hold: past either bound a new row is refused
/// ([`crate::StoreError::RosterFull`]); changes to rows already there never are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RosterCap {
    /// Rows other than unanswered requests: the owner's contacts.
    pub items: usize,
    /// Unanswered inbound requests ([`RosterItem::is_request_only`]): what
    /// strangers can make the server keep, bounded apart so that they cannot
    /// use up the owner's room for contacts.
    pub requests: usize,
}

/// An entry to append to a user's inbox log.
#[derive(Clone, Copy, Debug)]
pub struct NewInboxEntry<'a> {
    /// The stanza's id (as stamped by the server or the sender).
    pub stanza_id: &'a str,
    /// Full or bare JID of the sender.
    pub sender: &'a str,
    /// What this entry is (e.g. `"chat"`, `"groupchat"`, `"receipt"`): opaque to the store.
    pub kind: &'a str,
    /// The serialised stanza.
    pub xml: &'a str,
    /// When it was received, unix microseconds.
    pub at_micros: i64,
    /// Bare JID of the other party (the sender for `in`, the recipient for `out`).
    pub peer: &'a str,
    /// `"in"` (addressed to the owner) or `"out"` (sent by the owner).
    pub direction: &'a str,
    /// The message body, for search; `None` for receipts, markers and the like.
    pub body: Option<&'a str>,
    /// A key that makes the entry unique in its owner's log (e.g. the sender and
    /// the XEP-0359 origin-id): a second append with the same key is refused with
    /// [`StoreError::Duplicate`](crate::StoreError::Duplicate). `None`: no check.
    pub origin: Option<&'a str>,
}

/// An entry read back from a user's inbox log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InboxEntry {
    /// Per-owner sequence number: strictly increasing, starts at 1, never reused.
    pub seq: i64,
    /// See [`NewInboxEntry::stanza_id`].
    pub stanza_id: String,
    /// See [`NewInboxEntry::sender`].
    pub sender: String,
    /// See [`NewInboxEntry::kind`].
    pub kind: String,
    /// See [`NewInboxEntry::xml`].
    pub xml: String,
    /// See [`NewInboxEntry::at_micros`].
    pub at_micros: i64,
    /// See [`NewInboxEntry::peer`].
    pub peer: String,
    /// See [`NewInboxEntry::direction`].
    pub direction: String,
    /// See [`NewInboxEntry::body`].
    pub body: Option<String>,
}

/// Where a device starts reading its owner's inbox log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceStart {
    /// Entries with a greater sequence number are for this device.
    pub cursor: i64,
    /// Whether the owner is a member of a room (and may be owed group
    /// messages: `Store::room_catch_up`).
    pub in_rooms: bool,
}

/// Encodes roster groups as one text value: every group is written with `\`
/// and newline escaped and is *terminated* by a newline, so `[]` is `""` and
/// `[""]` is `"\n"`, and any group name (even one holding newlines) survives.
pub(crate) fn encode_groups(groups: &[String]) -> String {
    let mut out = String::with_capacity(groups.iter().map(|g| g.len() + 1).sum());
    for g in groups {
        for c in g.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('\n');
    }
    out
}

/// Inverse of [`encode_groups`].
pub(crate) fn decode_groups(text: &str) -> Result<Vec<String>, StoreError> {
    let mut groups = Vec::new();
    let mut cur = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\n' => groups.push(std::mem::take(&mut cur)),
            '\\' => match chars.next() {
                Some('\\') => cur.push('\\'),
                Some('n') => cur.push('\n'),
                other => {
                    return Err(StoreError::Corrupt(format!(
                        "bad escape {other:?} in roster groups"
                    )));
                }
            },
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        return Err(StoreError::Corrupt("unterminated roster group".into()));
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_round_trip() {
        let cases: Vec<Vec<String>> = vec![
            vec![],
            vec![String::new()],
            vec!["Friends".into()],
            vec!["a\nb".into(), "c\\n".into(), "".into(), "Друзья 👪".into()],
            vec!["x".into(), "x".into()],
        ];
        for groups in cases {
            let enc = encode_groups(&groups);
            assert_eq!(decode_groups(&enc).unwrap(), groups, "{enc:?}");
        }
        assert!(decode_groups("abc").is_err());
        assert!(decode_groups("a\\q\n").is_err());
    }

    #[test]
    fn subscription_strings() {
        for s in [
            Subscription::None,
            Subscription::To,
            Subscription::From,
            Subscription::Both,
        ] {
            assert_eq!(Subscription::parse(s.as_str()), Some(s));
            assert_eq!(s.as_str().parse::<Subscription>(), Ok(s));
        }
        assert_eq!(Subscription::parse("Both"), None);
    }
}
