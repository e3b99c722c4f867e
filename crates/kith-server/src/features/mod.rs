//! Protocol features, one module per specification, and the table that dispatches
//! IQ requests to them by (element, namespace).
//!
//! Adding a XEP means one new module here, one row in [`iq_handler`], and, if it is
//! advertised, its feature in `disco.rs` — which lists only what works end to end.

pub mod blocking;
pub mod calls;
pub mod carbons;
pub mod disco;
pub mod last;
pub mod mam;
pub mod muc;
pub mod pep;
pub mod ping;
pub mod presence;
pub mod privacy;
pub mod private;
pub mod profile;
pub mod push;
pub mod register;
pub mod retract;
pub mod roster;
pub mod time;
pub mod vcard;
pub mod version;

use kith_proto::{BareJid, Element, Jid, StanzaError, ns};

use crate::session::Session;

/// A push (an iq `set` from the server, RFC 6121 §2.1.6 and XEP-0191 §3.3) of
/// `payload` to the sessions of `owner` that `select` picks, on every node.
pub(crate) fn push_iq(
    server: &crate::Server,
    owner: &BareJid,
    select: crate::cluster::Select,
    payload: Element,
) {
    let iq = |to: Option<String>| {
        Element::new(ns::CLIENT, "iq")
            .attr("type", "set")
            .attr("id", format!("push-{}", crate::random_id(10)))
            .attr_opt("to", to)
            .child(payload.clone())
    };
    if let Some(cluster) = &server.cluster {
        cluster.hand_each(owner.as_str(), select.clone(), &iq(None));
    }
    server.router.with_sessions(owner.as_str(), |sessions| {
        for session in sessions.iter().filter(|s| select.takes(server, s)) {
            session.send(std::sync::Arc::new(iq(Some(session.jid.to_string()))));
        }
    });
}

/// Whom an IQ request is addressed to, after RFC 6120 §10.3 defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// The server itself (`to` is the domain).
    Server,
    /// The requester's own account (`to` absent or the requester's bare JID).
    OwnAccount,
    /// Another local account, answered by the server on its behalf.
    Account(BareJid),
}

/// A request as features see it.
pub(crate) struct Request<'a> {
    /// `get` or `set`.
    pub set: bool,
    /// The single payload child.
    pub payload: &'a Element,
    pub target: Target,
}

impl Request<'_> {
    /// For features that only exist on the user's own account (roster, archive,
    /// blocklist): another account gets `<forbidden/>`, the server's own JID
    /// `<service-unavailable/>` (it hosts no such thing).
    pub fn own_account_only(&self) -> Result<(), StanzaError> {
        match self.target {
            Target::OwnAccount => Ok(()),
            Target::Account(_) => Err(StanzaError::forbidden()),
            Target::Server => Err(StanzaError::service_unavailable()),
        }
    }
}

/// What a handler answers: the result payload (if any) or a stanza error.
pub(crate) type Response = Result<Option<Element>, StanzaError>;

/// The dispatch table: which feature handles a request with this payload.
async fn dispatch(session: &mut Session, request: &Request<'_>) -> Response {
    let payload = request.payload;
    match (payload.name.as_str(), payload.ns.as_str()) {
        ("query", ns::ROSTER) => roster::handle_iq(session, request).await,
        ("query", ns::DISCO_INFO) => disco::info(session, request).await,
        ("query", ns::DISCO_ITEMS) => disco::items(session, request).await,
        ("ping", ns::PING) => ping::handle(session, request),
        ("time", ns::TIME) => time::handle(session, request),
        ("query", ns::VERSION) => version::handle(session, request),
        ("query", ns::LAST) => last::handle(session, request).await,
        ("vCard", ns::VCARD) => vcard::handle(session, request).await,
        ("query", ns::PRIVATE) => private::handle(session, request).await,
        ("privacy", privacy::NS) => privacy::handle(session, request).await,
        ("blocklist" | "block" | "unblock", ns::BLOCKING) => {
            blocking::handle(session, request).await
        }
        ("query", ns::REGISTER) => register::after_auth(session, request).await,
        // Without an archive the namespace is unsupported (RFC 6120 §8.3.3.19).
        ("query" | "metadata" | "prefs", mam::NS) if session.server.config.archive.enabled => {
            mam::handle(session, request).await
        }
        ("enable" | "disable", carbons::CARBONS) => carbons::handle(session, request),
        ("enable" | "disable", push::NS) => push::handle(session, request).await,
        ("pubsub", pep::NS | pep::NS_OWNER) => pep::handle(session, request).await,
        (_, calls::NS) if session.server.config.calls.enabled => calls::handle(session, request),
        _ => Err(StanzaError::service_unavailable()),
    }
}

/// Handles an IQ from the session's client (its `from` already stamped).
pub(crate) async fn iq_from_client(session: &mut Session, iq: Element, to: Option<Jid>) {
    let kind = iq.get_attr("type").unwrap_or("");
    let server = session.server.clone();
    if matches!(kind, "result" | "error") {
        // XEP-0115: a client answering the server's caps query (to the domain).
        let to_server = to
            .as_ref()
            .is_none_or(|t| t.node().is_none() && t.domain().as_str() == server.domain);
        if to_server && pep::caps_answer(&server, &session.jid, &iq).await {
            return;
        }
        // Answers to the server's own requests (idle pings) end here; others travel on.
        if let Some(to) = to
            && to.resource().is_some()
        {
            crate::deliver::route(&server, iq).await;
        }
        return;
    }
    if iq.get_attr("id").is_none() || !matches!(kind, "get" | "set") {
        // RFC 6120 §8.2.3: an IQ needs an id and a known type.
        session.reply(StanzaError::bad_request().reply_to(&iq));
        return;
    }
    if crate::upload::is_component(&server, to.as_ref()) {
        // XEP-0363: the upload component lives in this process.
        let mut payloads = iq.elements();
        let reply = match (payloads.next(), payloads.next()) {
            (Some(payload), None) => {
                crate::upload::handle_iq(&server, &session.username, payload, kind == "set").await
            }
            _ => Err(StanzaError::bad_request()),
        };
        session.reply(match reply {
            Ok(payload) => result_for(&iq, payload),
            Err(error) => error.reply_to(&iq),
        });
        return;
    }
    let target = match &to {
        None => Target::OwnAccount,
        Some(to)
            if to.node().is_none()
                && to.resource().is_none()
                && to.domain().as_str() == server.domain =>
        {
            Target::Server
        }
        Some(to) if to.resource().is_none() && to.to_bare() == session.bare => Target::OwnAccount,
        Some(to) if to.resource().is_none() && server.is_local_user(to) => {
            Target::Account(to.to_bare())
        }
        Some(_) => {
            // Full JIDs and other domains are routed (or bounced) like any stanza.
            crate::deliver::route(&server, iq).await;
            return;
        }
    };
    if let Target::Account(account) = &target
        && server.blocked_between(&session.bare, account).await
    {
        session.reply(StanzaError::service_unavailable().reply_to(&iq));
        return;
    }
    let mut payloads = iq.elements();
    let (Some(payload), None) = (payloads.next(), payloads.next()) else {
        // RFC 6120 §8.2.3: a get or set carries exactly one payload.
        session.reply(StanzaError::bad_request().reply_to(&iq));
        return;
    };
    let request = Request {
        set: kind == "set",
        payload,
        target,
    };
    let reply = match dispatch(session, &request).await {
        Ok(payload) => result_for(&iq, payload),
        Err(error) => error.reply_to(&iq),
    };
    session.reply(reply);
}

/// The `type='result'` answer to `iq`.
pub(crate) fn result_for(iq: &Element, payload: Option<Element>) -> Element {
    let mut result = Element::new(ns::CLIENT, "iq")
        .attr_opt("id", iq.get_attr("id"))
        .attr("type", "result")
        .attr_opt("to", iq.get_attr("from"))
        .attr_opt("from", iq.get_attr("to"));
    if let Some(payload) = payload {
        result.push_child(payload);
    }
    result
}
