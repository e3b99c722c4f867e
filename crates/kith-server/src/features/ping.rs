//! XEP-0199 XMPP Ping: the server answers pings addressed to itself (§4.2,
//! client-to-server) or to the requester's own bare JID (§4.2: no `to`, or the
//! bare JID, means "handled by the server on behalf of the connected user").
//!
//! The server's own idle pings to clients live in `session.rs`; their answers end
//! in `features::iq_from_client`.

use kith_proto::StanzaError;

use super::{Request, Response, Target};
use crate::session::Session;

/// Answers `<ping xmlns='urn:xmpp:ping'/>` with an empty result.
pub(crate) fn handle(_session: &mut Session, request: &Request<'_>) -> Response {
    if request.set {
        // §3: a ping is an IQ-get; a set is not defined.
        return Err(StanzaError::bad_request());
    }
    match request.target {
        Target::Server | Target::OwnAccount => Ok(None),
        // §4.4: pings between users go to full JIDs (routed, not handled here). A ping
        // to another user's bare JID would make the server vouch for that account;
        // answer as for any namespace the server does not handle for others (RFC 6121
        // §8.5.1), which also says nothing about whether the account exists.
        Target::Account(_) => Err(StanzaError::service_unavailable()),
    }
}
