//! XEP-0092 Software Version: the server's name and version (§2).
//!
//! The optional `<os/>` is left out on purpose (§5 Security Considerations: revealing
//! the operating system helps attackers).

use kith_proto::{Element, StanzaError, ns};

use super::{Request, Response, Target};
use crate::session::Session;

/// Answers `<query xmlns='jabber:iq:version'/>` sent to the server.
pub(crate) fn handle(_session: &mut Session, request: &Request<'_>) -> Response {
    if request.set {
        // §2: only IQ-get is defined.
        return Err(StanzaError::bad_request());
    }
    match request.target {
        Target::Server => Ok(Some(version_element())),
        // A user's software is a question for one of their devices (a full JID,
        // routed like any stanza), not for the server (RFC 6121 §8.5.1).
        Target::OwnAccount | Target::Account(_) => Err(StanzaError::service_unavailable()),
    }
}

fn version_element() -> Element {
    Element::new(ns::VERSION, "query")
        .child(Element::new(ns::VERSION, "name").text("kith"))
        .child(Element::new(ns::VERSION, "version").text(env!("CARGO_PKG_VERSION")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_has_no_os() {
        let query = version_element();
        assert_eq!(
            query.child_text("name", ns::VERSION).as_deref(),
            Some("kith")
        );
        assert_eq!(
            query.child_text("version", ns::VERSION).as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        assert!(!query.has_child("os", ns::VERSION));
    }
}
