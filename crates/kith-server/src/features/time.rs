//! XEP-0202 Entity Time: the server's current time (§2), in UTC.
//!
//! kith always reports UTC with a `+00:00` offset: the host's local time zone says
//! nothing useful to a client and is a detail of the machine we don't disclose.

use kith_proto::{Element, StanzaError, ns};

use super::{Request, Response, Target};
use crate::datetime::format_datetime;
use crate::session::Session;

/// Answers `<time xmlns='urn:xmpp:time'/>` with `<tzo/>` and `<utc/>`.
pub(crate) fn handle(_session: &mut Session, request: &Request<'_>) -> Response {
    if request.set {
        // §2: only IQ-get is defined.
        return Err(StanzaError::bad_request());
    }
    match request.target {
        Target::Server | Target::OwnAccount => Ok(Some(time_element(crate::now_micros()))),
        // Another user's time is a question for one of their devices (a full JID,
        // routed like any stanza); the server does not answer for them.
        Target::Account(_) => Err(StanzaError::service_unavailable()),
    }
}

/// The `<time/>` payload for unix microseconds `now` (XEP-0202 §2, XEP-0082 §3.3).
fn time_element(now: i64) -> Element {
    Element::new(ns::TIME, "time")
        .child(Element::new(ns::TIME, "tzo").text("+00:00"))
        .child(Element::new(ns::TIME, "utc").text(format_datetime(now)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_is_utc() {
        assert_eq!(
            time_element(951_827_696_789_000).to_xml(ns::CLIENT),
            "<time xmlns='urn:xmpp:time'><tzo>+00:00</tzo><utc>2000-02-29T12:34:56.789Z</utc></time>"
        );
    }
}
