//! Client-to-server stream negotiation (RFC 6120 §4–§7): stream headers, STARTTLS,
//! SASL, resource binding; then hand-over to the session.
//!
//! The same negotiation runs on every transport through [`Link`]: plain TCP (which
//! must upgrade with STARTTLS first, RFC 6120 §5), direct TLS (XEP-0368) and
//! WebSocket (RFC 7395, see `http.rs`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use kith_proto::sasl::{self, Mechanism, SaslError, ScramHash, ScramServer, SecretRef};
use kith_proto::stream::Limits;
use kith_proto::{Element, FullJid, StreamErrorCondition, StreamEvent, ns};
use tokio::net::{TcpListener, TcpStream};

use crate::Server;
use crate::features;
use crate::limiter::ConnectionGuard;
use crate::link::{Header, Link, LinkError, LinkRead, LinkWrite, TcpLink};
use crate::session;
use crate::tls_stream;

/// How a c2s listener's streams are secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// STARTTLS required before anything else (RFC 6120 §5).
    Starttls,
    /// TLS from the first byte (XEP-0368).
    DirectTls,
    /// No TLS at all (`listen.c2s_plain`, loopback only): SASL PLAIN is not
    /// offered, as on any stream without TLS (RFC 6120 §13.8).
    Plain,
}

pub(crate) async fn accept_loop(server: Arc<Server>, listener: TcpListener, transport: Transport) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Typically EMFILE: back off instead of spinning.
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let server = server.clone();
        tokio::spawn(async move {
            let Some(slot) = server.connections.try_open(peer.ip()) else {
                tracing::debug!(%peer, "too many connections from this address");
                return;
            };
            serve_tcp(&server, tcp, peer, transport, slot).await;
        });
    }
}

/// Why negotiation ended without a session.
pub(crate) enum Ended {
    /// The peer went away or the link failed; nothing more to say.
    Gone,
    /// The peer closed its stream: close ours too (RFC 6120 §4.4, RFC 7395 §3.6).
    Closed,
    /// Close the stream with this error.
    Error(StreamErrorCondition, &'static str),
}

impl From<LinkError> for Ended {
    fn from(error: LinkError) -> Self {
        match error {
            LinkError::Eof | LinkError::Io(_) => Ended::Gone,
            LinkError::Xml(error) => Ended::Error(error.condition, xml_error_text(error.condition)),
        }
    }
}

/// A negotiation step's outcome within its time limit: running out of time is a
/// `connection-timeout` stream error.
fn in_time<T>(result: Result<Result<T, Ended>, tokio::time::error::Elapsed>) -> Result<T, Ended> {
    result.unwrap_or(Err(Ended::Error(
        StreamErrorCondition::ConnectionTimeout,
        "negotiation took too long",
    )))
}

fn xml_error_text(condition: StreamErrorCondition) -> &'static str {
    match condition {
        StreamErrorCondition::RestrictedXml => {
            "DTDs, entities, comments and processing instructions are not allowed"
        }
        StreamErrorCondition::PolicyViolation => "stanza too large or too deep",
        _ => "malformed XML",
    }
}

async fn serve_tcp(
    server: &Arc<Server>,
    tcp: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    slot: ConnectionGuard,
) {
    let limits = limits(server);
    let timeout = Duration::from_secs(server.config.limits.auth_timeout_secs);
    if transport == Transport::Plain {
        let link = TcpLink::new(tcp, limits);
        return negotiate(server, link, peer.ip(), false, false, slot).await;
    }
    let (tcp, config, kind) = if transport == Transport::DirectTls {
        (tcp, server.direct_tls.clone(), "direct TLS")
    } else {
        // STARTTLS: the plaintext phase, then the handshake on the same socket.
        let mut link = TcpLink::new(tcp, limits);
        let mut opened = false;
        let plaintext = tokio::time::timeout(timeout, starttls(server, &mut link, &mut opened));
        if let Err(ended) = in_time(plaintext.await) {
            return close(server, &mut link, opened, ended).await;
        }
        (link.into_inner(), server.starttls.clone(), "STARTTLS")
    };
    let Some(tls) = tls_handshake(config, tcp, timeout, peer, kind).await else {
        return;
    };
    negotiate(
        server,
        TcpLink::new(tls, limits),
        peer.ip(),
        true,
        false,
        slot,
    )
    .await
}

/// The TLS handshake on an accepted connection within `timeout`; `None` (logged)
/// when it fails or times out. Its result is an `Option` taken apart before
/// negotiating: a `match` on the handshake around the negotiation would keep the
/// result (≈ 1.2 KB) in the connection's task throughout.
async fn tls_handshake(
    config: Arc<rustls::ServerConfig>,
    tcp: TcpStream,
    timeout: Duration,
    peer: SocketAddr,
    kind: &'static str,
) -> Option<tls_stream::TlsStream> {
    match tokio::time::timeout(timeout, tls_stream::accept(config, tcp)).await {
        Ok(Ok(tls)) => Some(tls),
        Ok(Err(error)) => {
            tracing::debug!(%peer, %error, kind, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, kind, "TLS handshake timed out");
            None
        }
    }
}

pub(crate) fn limits(server: &Server) -> Limits {
    Limits {
        max_stanza_size: server.config.limits.max_stanza_size,
        ..Limits::default()
    }
}

/// The plaintext phase: only `<starttls/>` is acceptable (TLS is required).
async fn starttls<L: Link>(server: &Server, link: &mut L, opened: &mut bool) -> Result<(), Ended> {
    open_stream(server, link, opened).await?;
    let features = Element::new(ns::STREAM, "features")
        .child(Element::new(ns::TLS, "starttls").child(Element::new(ns::TLS, "required")));
    link.element(&features);
    link.flush().await.map_err(|_| Ended::Gone)?;
    match link.next_event().await? {
        StreamEvent::Stanza(element) if element.is("starttls", ns::TLS) => {
            link.element(&Element::new(ns::TLS, "proceed"));
            link.flush().await.map_err(|_| Ended::Gone)?;
            Ok(())
        }
        StreamEvent::Stanza(element) if is_stanza(&element) => Err(Ended::Error(
            StreamErrorCondition::NotAuthorized,
            "authenticate first",
        )),
        StreamEvent::Stanza(_) => Err(Ended::Error(
            StreamErrorCondition::PolicyViolation,
            "STARTTLS is required on this port (RFC 6120 §5)",
        )),
        StreamEvent::Open(_) => Err(Ended::Error(
            StreamErrorCondition::NotWellFormed,
            "second stream header",
        )),
        StreamEvent::Close => Err(Ended::Closed),
    }
}

fn is_stanza(element: &Element) -> bool {
    element.ns == ns::CLIENT && matches!(element.name.as_str(), "message" | "presence" | "iq")
}

/// Waits for the client's stream header and answers with ours.
async fn open_stream<L: LinkRead + LinkWrite>(
    server: &Server,
    link: &mut L,
    opened: &mut bool,
) -> Result<(), Ended> {
    let header = match link.next_event().await? {
        StreamEvent::Open(header) => header,
        _ => {
            return Err(Ended::Error(
                StreamErrorCondition::NotWellFormed,
                "expected a stream header",
            ));
        }
    };
    let id = crate::random_id(16);
    link.open(&Header {
        id: &id,
        from: &server.domain,
        to: None,
    });
    *opened = true;
    // RFC 6120 §4.9.3.6: a stream to a domain we don't serve.
    if let Some(to) = header.get_attr("to")
        && !to.eq_ignore_ascii_case(&server.domain)
    {
        return Err(Ended::Error(
            StreamErrorCondition::HostUnknown,
            "this server does not serve that domain",
        ));
    }
    // RFC 6120 §4.9.3.10: a client's stream is in `jabber:client`.
    if link
        .content_namespace()
        .is_some_and(|content| content != ns::CLIENT)
    {
        return Err(Ended::Error(
            StreamErrorCondition::InvalidNamespace,
            "a client's stream is in the jabber:client namespace",
        ));
    }
    // RFC 6120 §4.7.5: we speak 1.0 only.
    if let Some(version) = header.get_attr("version")
        && !version.starts_with("1.")
    {
        return Err(Ended::Error(
            StreamErrorCondition::UnsupportedVersion,
            "only XMPP 1.0 is supported",
        ));
    }
    Ok(())
}

/// Sends a stream error (after a header, which RFC 6120 §4.9.1.1 requires) and closes.
async fn close<L: LinkRead + LinkWrite>(server: &Server, link: &mut L, opened: bool, ended: Ended) {
    let error = matches!(ended, Ended::Error(..));
    if matches!(ended, Ended::Closed) {
        link.close();
    }
    if let Ended::Error(condition, text) = ended {
        if !opened {
            let id = crate::random_id(16);
            link.open(&Header {
                id: &id,
                from: &server.domain,
                to: None,
            });
        }
        tracing::debug!(%condition, text, "closing stream with an error");
        link.element(&condition.to_element(Some(text)));
        link.close();
    }
    link.shutdown().await;
    if error {
        link.linger().await;
    }
}

/// Negotiates SASL and resource binding on a link, then starts the session.
///
/// The session runs in a task of its own, holding the connection's `slot`: the
/// negotiation's task (sized for the TLS handshake, SASL and binding) ends here,
/// so an idle session keeps only its own, smaller, state.
///
/// Not an `async fn`, which would keep the link twice (as its argument and as
/// the local it moves into, 2 × 1,408 bytes over TLS) for every connection
/// still negotiating (`session::run` says more).
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn would keep its link argument twice"
)]
pub(crate) fn negotiate<L: Link>(
    server: &Arc<Server>,
    mut link: L,
    ip: IpAddr,
    secure: bool,
    _websocket: bool,
    slot: ConnectionGuard,
) -> impl Future<Output = ()> {
    async move {
        let timeout = Duration::from_secs(server.config.limits.auth_timeout_secs);
        let mut opened = false;
        let result = tokio::time::timeout(
            timeout,
            authenticate_and_bind(server, &mut link, ip, secure, &mut opened),
        )
        .await;
        let negotiated = match in_time(result) {
            Ok(negotiated) => negotiated,
            Err(ended) => return close(server, &mut link, opened, ended).await,
        };
        let (reader, writer) = link.split();
        match negotiated {
            Negotiated::Bound(bound) => {
                tokio::spawn(session::run(server.clone(), bound, reader, writer, slot));
            }
            // The session task takes the link over and answers `<resumed/>` itself.
            Negotiated::Resume { permit, h, sasl2 } => {
                let takeover: session::Takeover<_, _> = (reader, writer, sasl2);
                permit.send(session::Handoff::Link {
                    link: Box::new(takeover),
                    h,
                });
            }
        }
    }
}

/// How negotiation ended: a new session, or the takeover of a resumable one.
pub(crate) enum Negotiated {
    Bound(Bound),
    Resume {
        permit: tokio::sync::mpsc::OwnedPermit<session::Handoff>,
        h: u32,
        /// Resumed inside XEP-0388 authentication: the `<success/>` the
        /// session answers with, around its `<resumed/>`.
        sasl2: Option<Box<crate::sasl2::Success>>,
    },
}

/// The result of negotiation: a bound resource, ready for a session.
pub(crate) struct Bound {
    pub jid: FullJid,
    pub id: u64,
    pub rx: crate::queue::Receiver<crate::router::Outbound>,
    /// The device credential the session signed in with, if any.
    pub device: Option<String>,
    /// Notified when that credential is revoked.
    pub revoked: Arc<tokio::sync::Notify>,
    /// Stream management enabled inline (XEP-0386 with XEP-0198 §9): the
    /// session counts from its first stanza, resumable under the id it holds.
    pub sm: Option<session::InlineSm>,
    /// The session starts inactive (XEP-0352 inline with XEP-0386).
    pub inactive: bool,
    /// Undoes the bind if no session takes it over.
    pub unbind: Unbind,
}

/// A bind that never became a session is undone: when negotiation ends
/// between binding and the session's start (it ran out of time, or the link
/// failed), the resource leaves the router and its resumption id, if it got
/// one inline, the registry. The session disarms it when it starts.
pub(crate) struct Unbind {
    server: Arc<Server>,
    jid: FullJid,
    id: u64,
    /// The XEP-0198 resumption id enabled inline, if any.
    pub resume: Option<String>,
    armed: bool,
}

impl Unbind {
    /// The session took the bind over: nothing to undo.
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for Unbind {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        tracing::debug!(jid = %self.jid, "bound but never started; unbinding");
        self.server.unbind_session(&self.jid, self.id);
        if let Some(id) = &self.resume {
            self.server.resumable.remove(id);
        }
    }
}

async fn authenticate_and_bind<L: Link>(
    server: &Arc<Server>,
    link: &mut L,
    ip: IpAddr,
    secure: bool,
    opened: &mut bool,
) -> Result<Negotiated, Ended> {
    let Authenticated {
        username, device, ..
    } = match sasl_phase(server, link, ip, secure, opened).await? {
        SignedIn::Restart(authenticated) => {
            link.restart();
            open_stream(server, link, opened).await?;
            link.element(&bind_features(server, true, true));
            link.flush().await.map_err(|_| Ended::Gone)?;
            authenticated
        }
        // XEP-0388 §2.6.1: no restart; the features followed `<success/>`.
        SignedIn::Continue(authenticated) => authenticated,
        SignedIn::Done(negotiated) => return Ok(negotiated),
    };
    loop {
        let element = match link.next_event().await? {
            StreamEvent::Stanza(element) => element,
            StreamEvent::Close => return Err(Ended::Closed),
            StreamEvent::Open(_) => {
                return Err(Ended::Error(
                    StreamErrorCondition::NotWellFormed,
                    "unexpected header",
                ));
            }
        };
        if element.is("resume", session::SM) {
            match resumable_slot::<L>(server, &username, device.as_deref(), &element).await {
                Ok((permit, h)) => {
                    return Ok(Negotiated::Resume {
                        permit,
                        h,
                        sasl2: None,
                    });
                }
                Err(not_resumed) => {
                    // XEP-0198 §5: the client may go on and bind a new session.
                    link.element(&not_resumed.element());
                    link.flush().await.map_err(|_| Ended::Gone)?;
                    continue;
                }
            }
        }
        let Some(bind) = element
            .get_child("bind", ns::BIND)
            .filter(|_| element.is("iq", ns::CLIENT))
        else {
            return Err(Ended::Error(
                StreamErrorCondition::NotAuthorized,
                "bind a resource first",
            ));
        };
        let requested = bind
            .child_text("resource", ns::BIND)
            .filter(|r| !r.trim().is_empty());
        match bind_announced(
            server,
            &username,
            device.as_deref(),
            requested.as_deref(),
            false,
        )
        .await
        {
            Ok(bound) => {
                let result = Element::new(ns::CLIENT, "iq")
                    .attr_opt("id", element.get_attr("id"))
                    .attr("type", "result")
                    .child(
                        Element::new(ns::BIND, "bind")
                            .child(Element::new(ns::BIND, "jid").text(bound.jid.to_string())),
                    );
                link.element(&result);
                // A link gone now drops `bound`, which unbinds it.
                link.flush().await.map_err(|_| Ended::Gone)?;
                tracing::debug!(jid = %bound.jid, "resource bound");
                return Ok(Negotiated::Bound(bound));
            }
            Err(error) => {
                link.element(&error.reply_to(&element));
                link.flush().await.map_err(|_| Ended::Gone)?;
            }
        }
    }
}

/// The stream features of an authenticated stream: resource binding unless a
/// resource is bound (XEP-0386), stream management unless it is enabled.
pub(crate) fn bind_features(server: &Server, bind: bool, sm: bool) -> Element {
    let mut features = Element::new(ns::STREAM, "features");
    if bind {
        features.push_child(Element::new(ns::BIND, "bind"));
        features.push_child(
            Element::new(ns::SESSION, "session").child(Element::new(ns::SESSION, "optional")),
        );
    }
    features.push_child(Element::new(ns::ROSTER_VER, "ver"));
    features.push_child(Element::new(ns::PRE_APPROVAL, "sub"));
    if sm {
        features.push_child(Element::new(crate::session::SM, "sm"));
    }
    features
        .child(Element::new(crate::csi::CSI, "csi"))
        .child(features::disco::caps_element(features::disco::Offered::of(
            &server.config,
        )))
}

/// Why a `<resume/>` was refused: the `<failed/>` condition, and how many
/// stanzas the session had handled when that is known (§5: the client then
/// knows which of its unacknowledged stanzas not to send again).
pub(crate) struct NotResumed {
    condition: &'static str,
    handled: Option<u32>,
}

impl NotResumed {
    /// The `<failed/>` element that says so.
    pub(crate) fn element(&self) -> Element {
        let mut failed =
            Element::new(session::SM, "failed").child(Element::new(ns::STANZAS, self.condition));
        if let Some(handled) = self.handled {
            failed.set_attr("h", handled.to_string());
        }
        failed
    }
}

impl From<&'static str> for NotResumed {
    fn from(condition: &'static str) -> Self {
        NotResumed {
            condition,
            handled: None,
        }
    }
}

/// Finds the session a `<resume previd h/>` names, if this user may take it over
/// on this kind of link: a place in its handoff queue, and the client's `h`. A
/// session held by another node of the cluster can't move here: it ends there,
/// and the refusal carries its count.
pub(crate) async fn resumable_slot<L: Link>(
    server: &Server,
    username: &str,
    device: Option<&str>,
    resume: &Element,
) -> Result<(tokio::sync::mpsc::OwnedPermit<session::Handoff>, u32), NotResumed> {
    let h = resume
        .get_attr("h")
        .and_then(|h| h.parse::<u32>().ok())
        .ok_or("bad-request")?;
    let owner = kith_proto::BareJid::new(&format!("{username}@{}", server.domain))
        .map_err(|_| "bad-request")?;
    let previd = resume.get_attr("previd").unwrap_or_default();
    // Unknown, expired and other users' ids all look the same (§5).
    let Some(slot) = server.resumable.get(previd, &owner) else {
        let handled = match &server.cluster {
            Some(cluster) => cluster.resume_elsewhere(&owner, previd, device, h).await,
            None => None,
        };
        return Err(NotResumed {
            condition: "item-not-found",
            handled,
        });
    };
    // A device-credential session is that device: another device (or the
    // account password) can't take it over.
    if slot.link_type != std::any::TypeId::of::<(L::Reader, L::Writer)>()
        || slot.device.as_deref() != device
    {
        return Err("item-not-found".into());
    }
    let permit = slot
        .tx
        .reserve_owned()
        .await
        .map_err(|_| "item-not-found")?;
    Ok((permit, h))
}

/// Binds a resource ([`bind_resource`]) and, in a cluster, announces it
/// before the session reads its log: the cluster reaches it from then on
/// (`Cluster::bound`).
pub(crate) async fn bind_announced(
    server: &Arc<Server>,
    username: &str,
    device: Option<&str>,
    requested: Option<&str>,
    replace: bool,
) -> Result<Bound, kith_proto::StanzaError> {
    let bound = bind_resource(server, username, device, requested, replace)?;
    if let Some(cluster) = &server.cluster {
        Box::pin(cluster.bound(&bound.jid)).await;
    }
    Ok(bound)
}

/// Binds a resource. RFC 6120 §7.7.2.2: a conflicting or missing resource gets a
/// server-generated one, so an existing session is never cut off by a newcomer
/// — unless `replace`: the resource is the client's own (XEP-0386 §3.2.1), and
/// an older session of the same client ends (`router::replaced`).
pub(crate) fn bind_resource(
    server: &Arc<Server>,
    username: &str,
    device: Option<&str>,
    requested: Option<&str>,
    replace: bool,
) -> Result<Bound, kith_proto::StanzaError> {
    let bare = format!("{username}@{}", server.domain);
    let resource = match requested {
        Some(resource) if replace || !server.router.has_resource(&bare, resource) => {
            resource.to_owned()
        }
        Some(resource) => format!("{}.{}", resource, crate::random_id(6)),
        None => format!("kith-{}", crate::random_id(10)),
    };
    let jid = FullJid::new(&format!("{bare}/{resource}")).map_err(|_| {
        kith_proto::StanzaError::bad_request()
            .with_text("the resource is not a valid JID resourcepart")
    })?;
    let (tx, rx) = crate::queue::channel(server.config.limits.session_queue);
    let id = server.next_id();
    let revoked = Arc::new(tokio::sync::Notify::new());
    let entry = crate::router::SessionEntry::new(
        jid.clone(),
        id,
        tx,
        device.map(Arc::from),
        revoked.clone(),
    );
    match server
        .router
        .bind(entry, server.config.limits.max_sessions_per_user)
    {
        crate::router::BindOutcome::TooManySessions => Err(kith_proto::StanzaError::new(
            kith_proto::error::StanzaErrorCondition::ResourceConstraint,
        )
        .with_type(kith_proto::StanzaErrorType::Cancel)
        .with_text("too many sessions for this account")),
        _ => Ok(Bound {
            jid: jid.clone(),
            id,
            rx,
            device: device.map(str::to_owned),
            revoked,
            sm: None,
            inactive: false,
            unbind: Unbind {
                server: server.clone(),
                jid,
                id,
                resume: None,
                armed: true,
            },
        }),
    }
}

/// How authentication ended.
pub(crate) enum SignedIn {
    /// RFC 6120 SASL: the stream restarts (§6.4.6) and binding follows.
    Restart(Authenticated),
    /// XEP-0388 SASL2 without a resource bound: no restart; the features
    /// of the authenticated stream are sent, and binding follows.
    Continue(Authenticated),
    /// XEP-0388 SASL2 that bound a resource (XEP-0386) or resumed a session.
    Done(Negotiated),
}

/// Runs SASL (RFC 6120 §6, or XEP-0388 SASL2) until success.
async fn sasl_phase<L: Link>(
    server: &Arc<Server>,
    link: &mut L,
    ip: IpAddr,
    secure: bool,
    opened: &mut bool,
) -> Result<SignedIn, Ended> {
    open_stream(server, link, opened).await?;
    let mut mechanisms = Element::new(ns::SASL, "mechanisms");
    for mechanism in sasl::MECHANISMS {
        // RFC 6120 §13.8 / the issue: PLAIN only over TLS.
        if mechanism == Mechanism::Plain && !secure {
            continue;
        }
        mechanisms.push_child(Element::new(ns::SASL, "mechanism").text(mechanism.name()));
    }
    let mut features = Element::new(ns::STREAM, "features").child(mechanisms);
    // XEP-0388 §3: SASL2 only after TLS.
    if secure {
        features.push_child(crate::sasl2::feature(server));
    }
    if server.config.registration_enabled() {
        features.push_child(Element::new(ns::REGISTER_FEATURE, "register"));
    }
    link.element(&features);
    link.flush().await.map_err(|_| Ended::Gone)?;

    let mut failures = 0;
    loop {
        let element = match link.next_event().await? {
            StreamEvent::Stanza(element) => element,
            StreamEvent::Close => return Err(Ended::Closed),
            StreamEvent::Open(_) => {
                return Err(Ended::Error(
                    StreamErrorCondition::NotWellFormed,
                    "unexpected header",
                ));
            }
        };
        let (namespace, error) = if element.is("auth", ns::SASL) {
            let mechanism = element.get_attr("mechanism").and_then(Mechanism::parse);
            let result = match sasl::decode_payload(&element.text_content()) {
                Err(error) => Err(error),
                Ok(payload) => {
                    authenticate(server, link, mechanism, Some(payload), secure, ns::SASL).await?
                }
            };
            match result {
                Ok(authenticated) => {
                    link.element(&success_element(&authenticated.additional));
                    link.flush().await.map_err(|_| Ended::Gone)?;
                    signed_in(server, &authenticated).await;
                    return Ok(SignedIn::Restart(authenticated));
                }
                Err(error) => (ns::SASL, error),
            }
        } else if element.is("authenticate", ns::SASL2) && secure {
            match crate::sasl2::authenticate(server, link, &element).await? {
                Ok(signed) => return Ok(signed),
                Err(error) => (ns::SASL2, error),
            }
        } else if element.is("iq", ns::CLIENT)
            && matches!(element.get_attr("type"), Some("get" | "set"))
            && element.has_child("query", ns::REGISTER)
        {
            let reply = features::register::before_auth(server, ip, secure, &element).await;
            link.element(&reply);
            link.flush().await.map_err(|_| Ended::Gone)?;
            continue;
        } else if is_stanza(&element) {
            return Err(Ended::Error(
                StreamErrorCondition::NotAuthorized,
                "authenticate first",
            ));
        } else if element.is("starttls", ns::TLS) {
            return Err(Ended::Error(
                StreamErrorCondition::PolicyViolation,
                if secure {
                    "TLS is already in place"
                } else {
                    "STARTTLS is not offered on this port"
                },
            ));
        } else {
            return Err(Ended::Error(
                StreamErrorCondition::UnsupportedStanzaType,
                "unexpected element before authentication",
            ));
        };
        failures += 1;
        tracing::info!(%ip, condition = error.condition(), "authentication failed");
        // The same shape in both profiles (XEP-0388 §2.6.2), each in its own namespace;
        // after a failure the stream is as it was, and the client may try again.
        link.element(
            &Element::new(namespace, "failure").child(Element::new(ns::SASL, error.condition())),
        );
        link.flush().await.map_err(|_| Ended::Gone)?;
        if failures >= server.config.limits.max_auth_failures {
            return Err(Ended::Error(
                StreamErrorCondition::PolicyViolation,
                "too many failed authentication attempts",
            ));
        }
    }
}

/// Bookkeeping of a successful authentication, in either profile.
pub(crate) async fn signed_in(server: &Server, authenticated: &Authenticated) {
    tracing::debug!(
        user = %authenticated.username,
        device = ?authenticated.device,
        "authenticated"
    );
    if let Some(device) = &authenticated.device
        && let Err(error) = server
            .store
            .touch_device_credential(device, crate::now_micros())
            .await
    {
        tracing::warn!(%error, "recording device use");
    }
}

fn success_element(additional: &[u8]) -> Element {
    let success = Element::new(ns::SASL, "success");
    if additional.is_empty() {
        success
    } else {
        success.text(sasl::encode_payload(additional))
    }
}

/// One SASL exchange with a password (or device credential) mechanism, its
/// challenges and responses in `namespace`: RFC 6120's, or XEP-0388's. The
/// outer `Result` is for the link, the inner for SASL: `Ok(Ok(authenticated))`
/// on success. Without an initial response the exchange starts with an empty
/// challenge (RFC 4422 §3.3).
pub(crate) async fn authenticate<L: Link>(
    server: &Arc<Server>,
    link: &mut L,
    mechanism: Option<Mechanism>,
    initial: Option<Vec<u8>>,
    secure: bool,
    namespace: &'static str,
) -> Result<Result<Authenticated, SaslError>, Ended> {
    match mechanism {
        // RFC 6120 §6.5.4, XEP-0388 §2.3: invalid-mechanism.
        None => return Ok(Err(SaslError::InvalidMechanism)),
        Some(Mechanism::Plain) if !secure => return Ok(Err(SaslError::EncryptionRequired)),
        Some(_) => {}
    }
    let payload = match initial {
        Some(payload) => payload,
        None => match exchange(link, namespace, &[]).await? {
            Ok(payload) => payload,
            Err(error) => return Ok(Err(error)),
        },
    };
    let hash = match mechanism {
        // RFC 6120 §6.5.4: invalid-mechanism.
        None => return Ok(Err(SaslError::InvalidMechanism)),
        Some(Mechanism::Plain) => return Ok(plain(server, &payload).await),
        Some(Mechanism::ScramSha1) => ScramHash::Sha1,
        Some(Mechanism::ScramSha256) => ScramHash::Sha256,
    };
    let mut scram = ScramServer::new(hash);
    let first = match scram.client_first(&payload) {
        Ok(first) => first,
        Err(error) => return Ok(Err(error)),
    };
    if first
        .authzid
        .is_some_and(|authzid| !authzid_matches(server, &authzid, &first.username))
    {
        return Ok(Err(SaslError::InvalidAuthzid));
    }
    let username = crate::accounts::normalize_username(&first.username, &server.domain).ok();
    let stored = match &username {
        Some(username) => server.store.credentials(username).await.map_err(|error| {
            tracing::error!(%error, "reading credentials");
            Ended::Error(StreamErrorCondition::InternalServerError, "storage failure")
        })?,
        None => None,
    };
    // Unknown users get a made-up secret: the exchange fails only at the end, so
    // which accounts exist is not revealed (RFC 5802 §9 "user enumeration").
    let fallback;
    let secret = match &stored {
        Some(creds) => match hash {
            ScramHash::Sha1 => &creds.sha1,
            ScramHash::Sha256 => &creds.sha256,
        },
        None => {
            fallback = server.fake_secret(&first.username);
            &fallback
        }
    };
    // Device credentials of the account share its salt (credentials.rs): the
    // proof is checked against the account's own key and every device's.
    let devices = match (&username, stored.is_some()) {
        (Some(username), true) => {
            server
                .store
                .device_credentials(username)
                .await
                .map_err(|error| {
                    tracing::error!(%error, "reading device credentials");
                    Ended::Error(StreamErrorCondition::InternalServerError, "storage failure")
                })?
        }
        _ => Vec::new(),
    };
    let server_first = scram.server_first(
        SecretRef {
            salt: &secret.salt,
            iterations: secret.iterations,
            stored_key: &secret.stored_key,
            server_key: &secret.server_key,
        },
        &crate::random_id(24),
    );
    let response = match exchange(link, namespace, &server_first).await? {
        Ok(response) => response,
        Err(error) => return Ok(Err(error)),
    };
    let mut candidates = vec![(secret.stored_key.as_slice(), secret.server_key.as_slice())];
    candidates.extend(
        devices
            .iter()
            .map(|device| crate::credentials::scram_keys(device, hash)),
    );
    match (
        scram.client_final_any(&response, &candidates),
        username,
        stored.is_some(),
    ) {
        (Ok((index, server_final)), Some(username), true) => {
            // Index 0 is the account password; the others are devices in order.
            let device = index
                .checked_sub(1)
                .and_then(|i| devices.get(i))
                .map(|d| d.id.clone());
            Ok(Ok(Authenticated {
                username,
                device,
                additional: server_final,
                account_key: stored
                    .as_ref()
                    .map(crate::sasl2::account_key)
                    .unwrap_or_default(),
            }))
        }
        (Err(error), _, _) => Ok(Err(error)),
        _ => Ok(Err(SaslError::NotAuthorized)),
    }
}

/// Sends a challenge and waits for the client's response (or abort). Anything
/// else ends the stream (RFC 6120 §6.4.3; XEP-0388 §2.4: "MUST disconnect").
async fn exchange<L: Link>(
    link: &mut L,
    namespace: &'static str,
    challenge: &[u8],
) -> Result<Result<Vec<u8>, SaslError>, Ended> {
    let mut element = Element::new(namespace, "challenge");
    // RFC 6120 §6.4.2 writes an empty challenge as `=`; XEP-0388 §2.2 as nothing.
    if !(challenge.is_empty() && namespace == ns::SASL2) {
        element = element.text(sasl::encode_payload(challenge));
    }
    link.element(&element);
    link.flush().await.map_err(|_| Ended::Gone)?;
    let response = match link.next_event().await? {
        StreamEvent::Stanza(element) if element.is("response", namespace) => element,
        StreamEvent::Stanza(element) if element.is("abort", namespace) => {
            return Ok(Err(SaslError::Aborted));
        }
        StreamEvent::Stanza(_) => {
            return Err(Ended::Error(
                StreamErrorCondition::NotAuthorized,
                "SASL exchange in progress",
            ));
        }
        StreamEvent::Close => return Err(Ended::Closed),
        StreamEvent::Open(_) => {
            return Err(Ended::Error(
                StreamErrorCondition::NotWellFormed,
                "unexpected header",
            ));
        }
    };
    Ok(sasl::decode_payload(&response.text_content()))
}

/// Who authenticated: the account, and the device credential used, if any.
pub(crate) struct Authenticated {
    pub username: String,
    pub device: Option<String>,
    /// SASL additional data with success (the SCRAM server-final-message).
    pub additional: Vec<u8>,
    /// The account's password as it was when this authentication began
    /// (`sasl2::account_key`): a FAST token issued now is void once it changes.
    pub account_key: String,
}

/// RFC 6120 §6.3.8: we only let a user act as themselves.
pub(crate) fn authzid_matches(server: &Server, authzid: &str, username: &str) -> bool {
    let expected = format!("{}@{}", username.to_lowercase(), server.domain);
    authzid.eq_ignore_ascii_case(&expected) || authzid.eq_ignore_ascii_case(username)
}

async fn plain(server: &Arc<Server>, payload: &[u8]) -> Result<Authenticated, SaslError> {
    let credentials = sasl::parse_plain(payload)?;
    if credentials
        .authzid
        .as_deref()
        .is_some_and(|authzid| !authzid_matches(server, authzid, &credentials.username))
    {
        return Err(SaslError::InvalidAuthzid);
    }
    let username = crate::accounts::normalize_username(&credentials.username, &server.domain)
        .map_err(|_| SaslError::NotAuthorized)?;
    let stored = server.store.credentials(&username).await.map_err(|error| {
        tracing::error!(%error, "reading credentials");
        SaslError::NotAuthorized
    })?;
    let Some(stored) = stored else {
        return Err(SaslError::NotAuthorized);
    };
    let account_key = crate::sasl2::account_key(&stored);
    if let Some(id) = crate::credentials::parse_id(&credentials.password) {
        // A device credential: found by its id, compared by hash (credentials.rs).
        let row = server.store.device_credential(id).await.map_err(|error| {
            tracing::error!(%error, "reading device credentials");
            SaslError::NotAuthorized
        })?;
        return match row {
            Some(row)
                if row.owner == username
                    && crate::credentials::matches(&row, &credentials.password) =>
            {
                Ok(Authenticated {
                    username,
                    device: Some(row.id),
                    additional: Vec::new(),
                    account_key,
                })
            }
            _ => Err(SaslError::NotAuthorized),
        };
    }
    let secret = SecretRef {
        salt: &stored.sha256.salt,
        iterations: stored.sha256.iterations,
        stored_key: &stored.sha256.stored_key,
        server_key: &stored.sha256.server_key,
    };
    // PBKDF2 is deliberately slow: keep it off the async workers.
    let password = credentials.password;
    let secret_owned = (
        secret.salt.to_vec(),
        secret.iterations,
        secret.stored_key.to_vec(),
    );
    let ok = tokio::task::spawn_blocking(move || {
        let (salt, iterations, stored_key) = secret_owned;
        sasl::verify_password(
            ScramHash::Sha256,
            &password,
            SecretRef {
                salt: &salt,
                iterations,
                stored_key: &stored_key,
                server_key: &[],
            },
        )
    })
    .await
    .unwrap_or(false);
    if ok {
        Ok(Authenticated {
            username,
            device: None,
            additional: Vec::new(),
            account_key,
        })
    } else {
        Err(SaslError::NotAuthorized)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bind_no_session_took_over_is_undone() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut config = crate::Config::default();
        config.server.data_dir = dir.path().to_owned();
        for listener in [
            &mut config.listen.c2s,
            &mut config.listen.c2s_tls,
            &mut config.listen.http,
            &mut config.listen.https,
            &mut config.listen.stun,
        ] {
            listener.clear();
        }
        let running = Server::start(config).await.expect("starts");
        let server = running.server.clone();
        let bare = format!("juliet@{}", server.domain);
        // Negotiation ended (time-out, link gone) after binding: undone.
        let bound = bind_resource(&server, "juliet", None, Some("phone"), false).expect("binds");
        assert!(server.router.has_resource(&bare, "phone"));
        drop(bound);
        assert!(!server.router.has_resource(&bare, "phone"));
        // Taken over by a session (or the bench): it stays.
        let bound = bind_resource(&server, "juliet", None, Some("phone"), false).expect("binds");
        bound.unbind.disarm();
        assert!(server.router.has_resource(&bare, "phone"));
    }
}
