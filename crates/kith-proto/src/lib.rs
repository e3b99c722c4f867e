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
pub use xml::{Element, Node};
