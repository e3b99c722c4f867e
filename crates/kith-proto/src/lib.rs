//! The XMPP protocol core of kith.
//!
//! This crate turns bytes into validated XML elements and back, and holds the pure
//! protocol logic that needs no network: JIDs, namespaces, stanza and stream errors,
//! SASL (SCRAM-SHA-1, SCRAM-SHA-256, PLAIN).
//!
//! Architecture Invariant: this crate performs no I/O and reads no clock. It is fed
//! bytes and returns events, so tests can replay exact byte sequences and fuzzers can
//! target it directly. The tokio layer in `kith-server` only moves bytes and timers.
#![forbid(unsafe_code)]

pub mod error;
pub mod ns;
pub mod sasl;
pub mod stream;
pub mod xml;

pub use error::{StanzaError, StanzaErrorType, StreamErrorCondition};
pub use jid::{BareJid, FullJid, Jid};
pub use stream::{StreamEvent, StreamParser, StreamParserError};
pub use xml::{Element, Name, Node};

/// The bare part of `jid` (`node@domain`, or `domain`) as a slice of its
/// normalised form: what [`Jid::to_bare`] would spell, without formatting and
/// allocating a new JID (which it does on every call).
pub fn bare_str(jid: &Jid) -> &str {
    let full = jid.as_str();
    // RFC 7622 §3.1: the first `/` starts the resource; node and domain have none.
    full.split_once('/').map_or(full, |(bare, _)| bare)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_str_is_what_to_bare_spells() {
        for jid in [
            "Juliet@Example.COM/Balcony/with/slashes",
            "juliet@example.com",
            "example.com/resource",
            "example.com",
            "ju liet@example.com/r",
        ] {
            let Ok(parsed) = Jid::new(jid) else { continue };
            assert_eq!(bare_str(&parsed), parsed.to_bare().as_str(), "{jid}");
        }
    }
}
