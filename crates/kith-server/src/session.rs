//! An authenticated, bound client session: reads client stanzas, stamps their
//! `from`, dispatches them, and writes what the router queues for this resource.
//!
//! Architecture Invariant: the server, not the client, sets `from`. Every stanza
//! from a client leaves this module carrying the session's full JID (RFC 6120
//! §8.1.2.1); a client-supplied `from` that isn't the session's own JID closes the
//! stream with `<invalid-from/>` (§4.9.3.9).
//!
//! Delivery from the inbox log: the session is also a *device* with a cursor into
//! its user's log (DESIGN.md). Log entries reach it live through the router or, at
//! its first available presence, as a catch-up read from the store. Its cursor
//! advances when the client acknowledges them with XEP-0198 `<a h/>`, or, for a
//! client without stream management, once they were written to the connection.

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kith_proto::{BareJid, Element, FullJid, Jid, StanzaError, StreamErrorCondition, ns};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::Server;
use crate::c2s::Bound;
use crate::limiter::ConnectionGuard;
use crate::link::{KEEP_BUFFERS, LinkError, LinkRead, LinkWrite};
use crate::router::Outbound;
use crate::sm::StreamManagement;
use crate::{deliver, features};

/// XEP-0198 namespace.
pub(crate) const SM: &str = "urn:xmpp:sm:3";
/// Ask the client for an ack after this many unacknowledged stanzas.
const SM_REQUEST_EVERY: usize = 5;
/// Cursor updates are written at most this often (and always at the end).
const CURSOR_WRITE_INTERVAL: Duration = Duration::from_secs(1);
/// A client that leaves this many stanzas unacknowledged is closed (XEP-0198
/// keeps them for resending, so they must stay bounded).
const MAX_UNACKED: usize = 10_000;
/// Most messages of one session queued for the inbox log and not yet committed;
/// past it the session waits for the oldest commit before reading on.
const MAX_UNCOMMITTED: usize = 512;

/// A client resuming a session (XEP-0198 §5), with its `h`.
pub(crate) enum Handoff {
    /// A new connection to this node takes the session over: `link` is a
    /// [`Takeover`], boxed and type-erased (small in the session's task).
    Link { link: Box<dyn Any + Send>, h: u32 },
    /// The client asks another node of the cluster, which can't take this
    /// node's session over: the session counts what the client says it got
    /// (`h`), ends as when its resumption window is over (the log keeps what
    /// the device has not acknowledged, for its next session), and then
    /// answers how many stanzas it handled, for that node's `<failed h/>`.
    Elsewhere {
        h: u32,
        handled: tokio::sync::oneshot::Sender<u32>,
    },
}

/// What a new connection hands a session it resumes: its link halves, and,
/// when it resumed inside XEP-0388 authentication, the `<success/>` that
/// `<resumed/>` goes in (XEP-0198 §9.2).
pub(crate) type Takeover<R, W> = (R, W, Option<Box<crate::sasl2::Success>>);

/// Ends this node's resumable session `previd` of `owner` for a client that
/// asks another node to resume it (`Handoff::Elsewhere`, `Frame::Resume`):
/// how many stanzas it had handled, once it has ended; `None` if there is no
/// such session for this device.
pub(crate) async fn end_for_elsewhere(
    server: &Server,
    owner: &BareJid,
    previd: &str,
    device: Option<&str>,
    h: u32,
) -> Option<u32> {
    let slot = server.resumable.get(previd, owner)?;
    // As on one node: only the device that signed the session in resumes it.
    if slot.device.as_deref() != device {
        return None;
    }
    let (handled, answer) = tokio::sync::oneshot::channel();
    slot.tx.send(Handoff::Elsewhere { h, handled }).await.ok()?;
    answer.await.ok()
}

/// Stream management enabled before the session started (inline with
/// XEP-0386): the resumption id and where takeovers arrive, when resumable.
pub(crate) struct InlineSm {
    pub resume: Option<(String, mpsc::Receiver<Handoff>)>,
}

/// XEP-0198 §3 `<enable/>` for `owner`'s session on a link of `link_type`:
/// the `<enabled/>` answer and, when the client asked for resumption and the
/// server allows it, the session's resumption id, registered.
pub(crate) fn enable(
    server: &Server,
    element: &Element,
    owner: &BareJid,
    link_type: TypeId,
    device: Option<&str>,
) -> (Element, InlineSm) {
    let mut enabled = Element::new(SM, "enabled");
    let wants_resume = matches!(element.get_attr("resume"), Some("true" | "1"));
    let window = server.config.limits.resume_timeout_secs;
    if !(wants_resume && window > 0) {
        return (enabled, InlineSm { resume: None });
    }
    // In a cluster the id names this node (`Cluster::resume_id`).
    let id = server
        .cluster
        .as_ref()
        .map_or_else(|| crate::random_id(24), |c| c.resume_id());
    let (tx, rx) = mpsc::channel(1);
    server.resumable.insert(
        id.clone(),
        ResumeSlot {
            owner: owner.clone(),
            link_type,
            device: device.map(str::to_owned),
            tx,
        },
    );
    enabled = enabled
        .attr("id", id.clone())
        .attr("resume", "true")
        .attr("max", window.to_string());
    (
        enabled,
        InlineSm {
            resume: Some((id, rx)),
        },
    )
}

/// A resumable session, as the registry knows it.
#[derive(Clone)]
pub(crate) struct ResumeSlot {
    pub owner: BareJid,
    /// The link halves type the session runs on: a TCP session can be resumed over
    /// TCP (STARTTLS or direct TLS), a WebSocket one over WebSocket.
    pub link_type: TypeId,
    /// The device credential of the session: only that device may resume it.
    pub device: Option<String>,
    pub tx: mpsc::Sender<Handoff>,
}

/// Resumable sessions by stream id.
#[derive(Default)]
pub(crate) struct Resumable {
    slots: Mutex<HashMap<String, ResumeSlot>>,
}

impl Resumable {
    fn insert(&self, id: String, slot: ResumeSlot) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, slot);
    }

    pub(crate) fn remove(&self, id: &str) {
        self.slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }

    /// The session `id` if `owner` may resume it.
    pub fn get(&self, id: &str, owner: &BareJid) -> Option<ResumeSlot> {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        slots.get(id).filter(|slot| slot.owner == *owner).cloned()
    }
}

/// The state of one bound session, seen by the features that handle its stanzas.
pub(crate) struct Session {
    pub server: Arc<Server>,
    pub jid: FullJid,
    pub bare: BareJid,
    /// The account's username (the JID localpart).
    pub username: String,
    /// Who this is in the inbox log: the device credential, or the resource.
    pub device_key: String,
    /// The device credential the session signed in with.
    pub device: Option<String>,
    pub id: u64,
    /// Whether the client has sent initial presence (RFC 6121 §4.2).
    pub available: bool,
    /// Where the client sent directed presence, to send `unavailable` there at the end
    /// (RFC 6121 §4.6.3).
    pub directed: HashSet<String>,
    /// Stanzas for this client produced while handling its own stanza, with the
    /// inbox sequence number of those that come from the log.
    pub replies: Vec<(Reply, Option<i64>)>,
    /// This device's position in the inbox log: everything through it was
    /// written to the connection (and, with stream management, acknowledged).
    pub device_cursor: i64,
    /// The highest log entry written to this connection.
    pub written_seq: i64,
    /// Whether the user was a member of a room at login: its catch-up first
    /// has the rooms copy what they owe it (`Store::room_catch_up`).
    in_rooms: bool,
    /// Whether the backlog since `device_cursor` has been read from the store; live
    /// log entries are written only from then on.
    pub caught_up: bool,
    /// When the session was bound (unix microseconds): backlog entries logged
    /// since came while the device was online, so carry no delay stamp.
    pub bound_at: i64,
    /// Whether a catch-up read is in progress (more batches to read).
    pub backlog_pending: bool,
    /// Stream management; unacknowledged stanzas are kept as the text written.
    sm: Option<StreamManagement<String>>,
    /// The XEP-0198 stream id when resumption is enabled, and where takeovers arrive.
    resume: Option<(String, mpsc::Receiver<Handoff>)>,
    /// The `TypeId` of this session's link halves, for resumption.
    link_type: TypeId,
    /// XEP-0352: whether the client said it is inactive, and what waits meanwhile.
    inactive: bool,
    held: crate::csi::Held,
    /// A cursor position not yet saved, and when the last one was.
    cursor_pending: Option<i64>,
    cursor_saved_at: Instant,
    /// Client stanzas handled but not yet counted for XEP-0198, oldest first:
    /// messages waiting for their inbox-log commit, or committed since the
    /// session last settled the queue (`Some`), and stanzas handled after them
    /// (`None`), which are counted only once everything before them is.
    /// Consecutive messages are thus pipelined into the group commit while `h`
    /// still only covers what is durable.
    uncommitted: VecDeque<Option<deliver::Committed>>,
}

type End = Option<(StreamErrorCondition, &'static str)>;

/// The session's deadlines behind its one timer: the idle ping (XEP-0199) and its
/// answer, giving a quiet client's parser back ([`KEEP_BUFFERS`]), and the end of
/// the XEP-0198 resumption window while detached. What the client sends only
/// records an instant; the timer is set again when it fires or when a deadline
/// comes nearer, not at every stanza (setting a tokio timer takes the timer
/// wheel's lock).
struct Clock {
    idle: Duration,
    /// When the client last sent something.
    heard: Instant,
    /// When the idle ping went out, unanswered so far.
    pinged: Option<Instant>,
    /// Detached: when the resumption window ends.
    resume_until: Option<Instant>,
}

/// What a firing of the session's timer calls for.
enum Due {
    Nothing,
    Quiet,
    Ping,
    PingUnanswered,
    ResumptionOver,
}

impl Clock {
    fn new(idle: Duration) -> Self {
        Clock {
            idle,
            heard: Instant::now(),
            pinged: None,
            resume_until: None,
        }
    }

    /// How long a pinged client has to answer.
    fn ping_wait(&self) -> Duration {
        self.idle.min(Duration::from_secs(60))
    }

    /// The nearest deadline; `holding`: the session keeps memory a quiet spell
    /// frees (the reader's parser and buffers, the queue of messages it sent).
    fn due(&self, holding: bool) -> Instant {
        if let Some(until) = self.resume_until {
            return until;
        }
        let next = match self.pinged {
            Some(at) => at + self.ping_wait(),
            None => self.heard + self.idle,
        };
        if holding {
            next.min(self.heard + KEEP_BUFFERS)
        } else {
            next
        }
    }

    fn heard(&mut self) {
        self.heard = Instant::now();
        self.pinged = None;
    }

    fn detached(&mut self, window: Duration) {
        self.resume_until = Some(Instant::now() + window);
    }

    fn attached(&mut self) {
        self.resume_until = None;
        self.heard();
    }

    fn fired(&mut self, attached: bool) -> Due {
        let now = Instant::now();
        if !attached {
            return match self.resume_until {
                Some(until) if now >= until => Due::ResumptionOver,
                _ => Due::Nothing,
            };
        }
        match self.pinged {
            Some(at) if now >= at + self.ping_wait() => return Due::PingUnanswered,
            None if now >= self.heard + self.idle => {
                self.pinged = Some(now);
                return Due::Ping;
            }
            _ => {}
        }
        if now >= self.heard + KEEP_BUFFERS {
            Due::Quiet
        } else {
            Due::Nothing
        }
    }
}

/// The most a session's task may take, checked in debug builds as [`run`] makes
/// it: the future's size is a session's largest cost while idle.
pub(crate) const TASK_MAX_BYTES: usize = 1536;

/// Runs a bound session to its end, holding the connection's `slot` (its
/// address's connection count) until then.
///
/// Not an `async fn`: one keeps its arguments for the task's whole life beside
/// the locals they are moved into (rust-lang/rust#62958), and this future is
/// the largest part of an idle session's memory. Everything the block needs is
/// made here and captured once (a TLS session's task: 2,680 → 1,496 bytes).
pub(crate) fn run<R: LinkRead + 'static, W: LinkWrite + 'static>(
    server: Arc<Server>,
    bound: Bound,
    mut reader: R,
    mut writer: W,
    slot: ConnectionGuard,
) -> impl Future<Output = ()> {
    let Bound {
        jid,
        id,
        mut rx,
        device,
        revoked,
        sm: inline_sm,
        inactive,
        unbind,
    } = bound;
    // From here the session undoes its own bind (`finish`).
    unbind.disarm();
    // A device credential is the device, whatever resource it binds; a password
    // login is a device per resource (ARCHITECTURE.md, the inbox log).
    let device_key = match &device {
        Some(id) => crate::credentials::device_resource(id),
        None => jid.resource().as_str().to_owned(),
    };
    let bare = jid.to_bare();
    let username = bare
        .node()
        .map(|n| n.as_str().to_owned())
        .unwrap_or_default();
    let mut session = Session {
        server,
        jid,
        bare,
        username,
        device_key,
        device,
        id,
        available: false,
        directed: HashSet::new(),
        replies: Vec::new(),
        // Set from the store below, before anything reads them.
        device_cursor: 0,
        written_seq: 0,
        in_rooms: false,
        caught_up: false,
        bound_at: crate::now_micros(),
        backlog_pending: false,
        sm: inline_sm.as_ref().map(|_| StreamManagement::default()),
        resume: inline_sm.and_then(|sm| sm.resume),
        link_type: TypeId::of::<(R, W)>(),
        inactive,
        held: crate::csi::Held::default(),
        cursor_pending: None,
        cursor_saved_at: Instant::now(),
        uncommitted: VecDeque::new(),
    };
    let task = async move {
        // Every await in this block that a session does not idle in is boxed: the
        // task's size is that of its largest await, and idle sessions are most of them.
        match Box::pin(session.server.store.device_attach(
            &session.username,
            &session.device_key,
            crate::now_micros(),
        ))
        .await
        {
            Ok(start) => {
                session.device_cursor = start.cursor;
                session.written_seq = start.cursor;
                session.in_rooms = start.in_rooms;
            }
            Err(error) => {
                tracing::error!(%error, "registering the device");
                session.server.unbind_session(&session.jid, session.id);
                if let Some((id, _)) = &session.resume {
                    session.server.resumable.remove(id);
                }
                writer.element(
                    &StreamErrorCondition::InternalServerError.to_element(Some("storage failure")),
                );
                writer.close();
                writer.shutdown().await;
                return;
            }
        }
        let mut clock = Clock::new(Duration::from_secs(
            session.server.config.limits.idle_timeout_secs.max(1),
        ));
        let timer = tokio::time::sleep_until(clock.due(false));
        tokio::pin!(timer);

        // While the link is down and the session waits to be resumed, nothing is read
        // or written; the router keeps queueing (up to the queue's bound).
        let mut attached = true;
        let resume_window = Duration::from_secs(session.server.config.limits.resume_timeout_secs);
        let end: End = loop {
            // The timer moves only when it fired or a deadline came nearer (see `Clock`).
            // What a quiet session gives back: the reader's buffers, and the
            // queue of messages it sent (`release_uncommitted`).
            let holding = reader.holds_buffers() || session.uncommitted.capacity() > 0;
            let due = clock.due(attached && holding);
            if timer.is_elapsed() || due < timer.deadline() {
                timer.as_mut().reset(due);
            }
            let step: Result<(), End> = tokio::select! {
                event = reader.next_event(), if attached => {
                    clock.heard();
                    match event {
                        // Boxed: an idle session's task then doesn't carry the (large)
                        // state of handling a stanza, only while it handles one.
                        Ok(kith_proto::StreamEvent::Stanza(stanza)) => {
                            Box::pin(session.handle(stanza)).await.map_err(Some)
                        }
                        Ok(kith_proto::StreamEvent::Close) => Err(None),
                        Ok(kith_proto::StreamEvent::Open(_)) => {
                            Err(Some((StreamErrorCondition::NotWellFormed, "unexpected stream header")))
                        }
                        Err(LinkError::Xml(error)) => Err(Some((error.condition, "invalid XML"))),
                        Err(LinkError::Eof | LinkError::Io(_)) => {
                            if session.resume.is_none() {
                                break None;
                            }
                            // XEP-0198 §5: keep the session for the resumption window.
                            tracing::debug!(jid = %session.jid, "link lost; waiting for resumption");
                            attached = false;
                            session.set_detached(true);
                            writer.shutdown().await;
                            clock.detached(resume_window);
                            continue;
                        }
                    }
                }
                handoff = next_handoff(&mut session.resume) => {
                    // `<resumed h/>` must count every message that is durable by now.
                    Box::pin(session.drain_uncommitted()).await;
                    let (link, h) = match handoff {
                        Handoff::Link { link, h } => (link, h),
                        Handoff::Elsewhere { h, handled } => {
                            tracing::debug!(jid = %session.jid, "resumed on another node; ending here");
                            // A count higher than what was sent acknowledges nothing.
                            let _ = session.acknowledged(h);
                            // Answered once the session is gone and its cursor
                            // saved: the other node's new session for the device
                            // starts after what it acknowledged. (Ending again
                            // below finds nothing left to do.)
                            Box::pin(session.finish()).await;
                            let _ = handled.send(session.sm.as_ref().map_or(0, |sm| sm.inbound));
                            break None;
                        }
                    };
                    if let Some(link) = session.take_over::<R, W>(link, h) {
                        if attached {
                            writer.shutdown().await;
                        }
                        (reader, writer) = *link;
                        attached = true;
                        session.set_detached(false);
                        clock.attached();
                        session.resend_unacked(&mut writer);
                    }
                    Ok(())
                }
                () = revoked.notified() => {
                    if !attached {
                        // Its device credential was revoked, or a new
                        // connection took its resource (`router::replaced`).
                        tracing::debug!(jid = %session.jid, "ending a session waiting to be resumed");
                        break None;
                    }
                    tracing::info!(jid = %session.jid, "device credential revoked; ending the session");
                    Err(Some((StreamErrorCondition::NotAuthorized, "this device was signed out")))
                }
                () = std::future::ready(()), if session.backlog_pending => {
                    Box::pin(deliver::read_backlog(&mut session)).await;
                    Ok(())
                }
                outbound = rx.recv(), if attached => match outbound {
                    Some(outbound) => session.write_outbound(&mut writer, outbound),
                    None => Err(None),
                },
                () = &mut timer => match clock.fired(attached) {
                    Due::Nothing => Ok(()),
                    Due::ResumptionOver => {
                        tracing::debug!(jid = %session.jid, "resumption window over");
                        break None;
                    }
                    Due::Quiet => {
                        reader.release_buffers();
                        session.release_uncommitted();
                        Ok(())
                    }
                    Due::PingUnanswered => {
                        Err(Some((StreamErrorCondition::ConnectionTimeout, "no answer to ping")))
                    }
                    Due::Ping => {
                        // XEP-0199 §4.1 client-to-server ping: a silent client must answer.
                        let ping = Element::new(ns::CLIENT, "iq")
                            .attr("type", "get")
                            .attr("id", "kith-idle-ping")
                            .attr("from", session.server.domain.clone())
                            .attr("to", session.jid.to_string())
                            .child(Element::new(ns::PING, "ping"));
                        session.reply(ping);
                        Ok(())
                    }
                }
            };
            session.emit_replies(&mut writer);
            let mut step = step;
            // Write everything already queued before paying for a flush.
            while step.is_ok() {
                match rx.try_recv() {
                    Ok(outbound) => step = session.write_outbound(&mut writer, outbound),
                    Err(_) => break,
                }
            }
            if !attached {
                continue;
            }
            session.request_ack_if_due(&mut writer);
            if session
                .sm
                .as_ref()
                .is_some_and(|sm| sm.unacked() > MAX_UNACKED)
            {
                step = Err(Some((
                    StreamErrorCondition::PolicyViolation,
                    "too many unacknowledged stanzas",
                )));
            }
            if writer.flush().await.is_err() {
                if session.resume.is_some() {
                    attached = false;
                    session.set_detached(true);
                    clock.detached(resume_window);
                    continue;
                }
                break None;
            }
            if session.sm.is_none() && session.written_seq > session.device_cursor {
                // Without stream management, written is as good as it gets.
                session.cursor_pending = Some(session.written_seq);
            }
            // Asked first: the boxed future is an allocation per flush.
            if session.cursor_save_due() {
                Box::pin(session.save_cursor(false)).await;
            }
            if let Err(end) = step {
                break end;
            }
        };

        Box::pin(session.finish()).await;
        if !attached {
            return;
        }
        let error = end.is_some();
        if let Some((condition, text)) = end {
            tracing::debug!(jid = %session.jid, %condition, text, "closing session with a stream error");
            writer.element(&condition.to_element(Some(text)));
        }
        writer.close();
        writer.shutdown().await;
        if error {
            Box::pin(reader.linger()).await;
        }
        // The connection counts against its address's limit until here: naming
        // `slot` is what moves it into this block (without it, it would go when
        // `run` returns, as the task is spawned).
        drop(slot);
    };
    debug_assert!(
        std::mem::size_of_val(&task) <= TASK_MAX_BYTES,
        "a session task of {} bytes",
        std::mem::size_of_val(&task)
    );
    task
}

/// A stanza queued for the session's own client.
#[derive(Debug)]
pub enum Reply {
    Stanza(Element),
    /// A whole stanza already serialised as a top-level element that declares
    /// its namespace (a log entry amended in place, [`deliver::read_backlog`]).
    Serialized(String),
    /// Nothing to write: a log entry this device does not get (the user's own
    /// sent copy, an unreadable one), passed in its place among the entries
    /// read, so that those before it are still written.
    Skip,
}

impl Session {
    /// Writes one stanza to the client, counting it for stream management.
    fn emit<W: LinkWrite>(&mut self, writer: &mut W, stanza: &Element, seq: Option<i64>) {
        if !self.first_write_of(seq) {
            return;
        }
        // Only stanzas count, not stream-management nonzas (XEP-0198 §4).
        if let Some(sm) = &mut self.sm
            && stanza.ns == ns::CLIENT
        {
            let xml = W::serialize(stanza);
            writer.raw(&xml);
            sm.sent(seq, xml);
        } else {
            writer.element(stanza);
        }
    }

    /// Like [`Session::emit`], for a stanza already serialised.
    fn emit_serialized<W: LinkWrite>(&mut self, writer: &mut W, xml: Cow<str>, seq: Option<i64>) {
        if !self.first_write_of(seq) {
            return;
        }
        writer.raw(&xml);
        if let Some(sm) = &mut self.sm {
            sm.sent(seq, xml.into_owned());
        }
    }

    /// Whether the log entry `seq` (if any) is new to this connection; records it.
    /// An entry already written (a live copy racing the catch-up read, or the other
    /// way round) is not written twice.
    fn first_write_of(&mut self, seq: Option<i64>) -> bool {
        if let Some(seq) = seq {
            if seq <= self.written_seq {
                return false;
            }
            self.written_seq = seq;
        }
        true
    }

    /// Writes the queued replies.
    fn emit_replies<W: LinkWrite>(&mut self, writer: &mut W) {
        for (reply, seq) in std::mem::take(&mut self.replies) {
            self.emit_reply(writer, reply, seq);
        }
    }

    fn emit_reply<W: LinkWrite>(&mut self, writer: &mut W, reply: Reply, seq: Option<i64>) {
        match reply {
            Reply::Stanza(stanza) => self.emit(writer, &stanza, seq),
            Reply::Serialized(xml) => self.emit_serialized(writer, Cow::Owned(xml), seq),
            Reply::Skip => {
                self.first_write_of(seq);
            }
        }
    }

    /// Sends what XEP-0352 held back (before anything important, to keep order).
    fn flush_held<W: LinkWrite>(&mut self, writer: &mut W) {
        if self.held.is_empty() {
            return;
        }
        for stanza in self.held.drain() {
            self.emit(writer, &stanza, None);
        }
    }

    /// Applies a takeover by a new connection; returns its link halves if this
    /// session is resumed on them (XEP-0198 §5).
    fn take_over<R: 'static, W: LinkWrite + 'static>(
        &mut self,
        link: Box<dyn Any + Send>,
        h: u32,
    ) -> Option<Box<(R, W)>> {
        let Ok(link) = link.downcast::<Takeover<R, W>>() else {
            // c2s checks the link type before handing over; nothing to answer on.
            return None;
        };
        let id = self
            .resume
            .as_ref()
            .map(|(id, _)| id.clone())
            .unwrap_or_default();
        let inbound = self.sm.as_ref()?.inbound;
        let (reader, mut writer, sasl2) = *link;
        if let Err(error) = self.acknowledged(h) {
            // §4: the client claims more than was sent: refuse, close that link.
            tracing::debug!(%error, "resumption with a bad h");
            let failed = Element::new(SM, "failed")
                .attr("h", inbound.to_string())
                .child(Element::new(ns::STANZAS, "unexpected-request"));
            match sasl2 {
                // Inside XEP-0388 authentication, which succeeded: its answer.
                Some(success) => writer.element(&success.element(self.bare.as_str(), [failed])),
                None => writer.element(&failed),
            }
            writer.close();
            tokio::spawn(async move { writer.shutdown().await });
            return None;
        }
        let resumed = Element::new(SM, "resumed")
            .attr("previd", id)
            .attr("h", inbound.to_string());
        match sasl2 {
            // XEP-0198 §9.2: inside `<success/>`, and no stream features after it.
            Some(success) => writer.element(&success.element(self.jid.as_str(), [resumed])),
            None => writer.element(&resumed),
        }
        tracing::debug!(jid = %self.jid, "session resumed");
        // Boxed until the session's loop takes it apart: the task's size is
        // that of its largest await (`run`).
        Some(Box::new((reader, writer)))
    }

    /// Applies the client's count of stanzas it got (`<a h/>`, or the `h` of
    /// a `<resume/>`): what it acknowledged moves the device's cursor on.
    fn acknowledged(&mut self, h: u32) -> Result<(), crate::sm::HandledCountTooHigh> {
        let Some(sm) = &mut self.sm else {
            return Ok(());
        };
        if let Some(seq) = sm.ack(h)? {
            self.cursor_pending = Some(seq.max(self.cursor_pending.unwrap_or(0)));
        }
        Ok(())
    }

    /// §5: after `<resumed/>`, everything the client had not acknowledged again.
    fn resend_unacked<W: LinkWrite>(&mut self, writer: &mut W) {
        let Some(sm) = &mut self.sm else {
            return;
        };
        for (seq, stanza) in sm.take_unacked() {
            writer.raw(&stanza);
            sm.sent(seq, stanza);
        }
    }

    fn write_outbound<W: LinkWrite>(
        &mut self,
        writer: &mut W,
        outbound: Outbound,
    ) -> Result<(), End> {
        match outbound {
            Outbound::Stanza(stanza) => {
                if self.inactive && self.held.hold(&stanza) {
                    return Ok(());
                }
                self.flush_held(writer);
                self.emit(writer, &stanza, None);
                Ok(())
            }
            Outbound::Logged(stanza, seq) => {
                // Entries past the cursor that the catch-up hasn't reached yet wait
                // for it: it reads them in order, and then this copy is skipped.
                if self.caught_up && !self.gap_before(seq) {
                    self.flush_held(writer);
                    self.emit(writer, &stanza, Some(seq));
                }
                Ok(())
            }
            Outbound::LoggedXml(xml, seq) => {
                // As `Logged`.
                if self.caught_up && !self.gap_before(seq) {
                    self.flush_held(writer);
                    self.emit_serialized(writer, Cow::Borrowed(&xml), Some(seq));
                }
                Ok(())
            }
            Outbound::LoggedShared { xml, to, seq } => {
                // As `Logged`; alone, a node hands entries over in commit order.
                if self.caught_up && seq > self.written_seq && !self.gap_before(seq) {
                    self.flush_held(writer);
                    match deliver::addressed(&xml, &to, None) {
                        Some(reply) => self.emit_reply(writer, reply, Some(seq)),
                        None => tracing::warn!(seq, "skipping an unreadable shared stanza"),
                    }
                }
                Ok(())
            }
            Outbound::Wake(seq) => {
                // Another node committed entries through `seq`: read them from
                // the log (before the catch-up ends, the catch-up reads them).
                if self.caught_up && seq > self.written_seq {
                    self.backlog_pending = true;
                }
                Ok(())
            }
            Outbound::Close(condition, text) => Err(Some((condition, text))),
        }
    }

    /// In a cluster, whether entry `seq` may have been preceded by one another
    /// node committed and whose wake-up has not come yet (both nodes append to
    /// this log; writing `seq` first would move the cursor past the other for
    /// good): then the log is read from what was written, in order, instead.
    /// (Alone, a node hands entries over in commit order.) The entries between
    /// may also be the user's own sent copies: a read either way.
    fn gap_before(&mut self, seq: i64) -> bool {
        let gap = self.server.cluster.is_some() && seq > self.written_seq + 1;
        if gap {
            self.backlog_pending = true;
        }
        gap
    }

    /// XEP-0198 §4: ask for an ack once a few stanzas are outstanding.
    fn request_ack_if_due<W: LinkWrite>(&mut self, writer: &mut W) {
        if let Some(sm) = &mut self.sm
            && !sm.requested
            && (sm.unacked() >= SM_REQUEST_EVERY
                || (sm.unacked() > 0 && self.written_seq > self.device_cursor))
        {
            sm.requested = true;
            writer.element(&Element::new(SM, "r"));
        }
    }

    /// Whether [`Session::save_cursor`] would write (unforced) now.
    fn cursor_save_due(&self) -> bool {
        self.cursor_pending.is_some() && self.cursor_saved_at.elapsed() >= CURSOR_WRITE_INTERVAL
    }

    async fn save_cursor(&mut self, force: bool) {
        if !force && !self.cursor_save_due() {
            return;
        }
        let Some(seq) = self.cursor_pending else {
            return;
        };
        self.cursor_pending = None;
        self.cursor_saved_at = Instant::now();
        if seq <= self.device_cursor {
            return;
        }
        match self
            .server
            .store
            .device_ack(&self.username, &self.device_key, seq, crate::now_micros())
            .await
        {
            Ok(()) => self.device_cursor = seq,
            Err(error) => tracing::warn!(%error, "saving the device cursor"),
        }
    }

    /// Handles one top-level element from the client.
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` stores the stanza twice"
    )]
    fn handle(
        &mut self,
        mut stanza: Element,
    ) -> impl Future<Output = Result<(), (StreamErrorCondition, &'static str)>> + Send + '_ {
        // Not `async fn`: the stanza would be stored twice in the future (as
        // given, and moved into the body), allocated per stanza (`run`;
        // `deliver::route_parsed`).
        async move {
            if stanza.ns == SM {
                if stanza.name == "r" {
                    // The answer counts the messages still being committed, so wait.
                    self.drain_uncommitted().await;
                }
                return self.handle_sm(&stanza);
            }
            if stanza.ns == crate::csi::CSI {
                match stanza.name.as_str() {
                    "inactive" => self.inactive = true,
                    "active" => {
                        self.inactive = false;
                        for held in self.held.drain() {
                            self.replies
                                .push((Reply::Stanza(Element::clone(&held)), None));
                        }
                    }
                    _ => {
                        return Err((
                            StreamErrorCondition::UnsupportedStanzaType,
                            "unknown CSI element",
                        ));
                    }
                }
                return Ok(());
            }
            if stanza.ns != ns::CLIENT
                || !matches!(stanza.name.as_str(), "message" | "presence" | "iq")
            {
                return Err((
                    StreamErrorCondition::UnsupportedStanzaType,
                    "unsupported top-level element",
                ));
            }
            if let Some(from) = stanza.get_attr("from")
                && !self.is_own_address(from)
            {
                return Err((
                    StreamErrorCondition::InvalidFrom,
                    "the from address is not yours",
                ));
            }
            stanza.set_attr("from", self.jid.as_str());
            let to = match stanza.get_attr("to").map(Jid::new) {
                None => None,
                Some(Ok(to)) => Some(to),
                Some(Err(_)) => {
                    if stanza.get_attr("type") != Some("error") {
                        self.reply(StanzaError::jid_malformed().reply_to(&stanza));
                    }
                    self.count_handled();
                    return Ok(());
                }
            };
            if stanza.name != "message" {
                // What a client does after sending messages sees them stored (a MAM
                // query, say): only runs of messages are pipelined.
                self.drain_uncommitted().await;
            }
            match stanza.name.as_str() {
                "message" => {
                    if let Some(committed) = deliver::message_from_client(self, stanza, to).await {
                        self.settle_committed();
                        self.uncommitted.push_back(Some(committed));
                        if self.uncommitted.len() > MAX_UNCOMMITTED {
                            self.wait_oldest_commit().await;
                        }
                        return Ok(());
                    }
                }
                // Boxed: the message path's state alone is what every stanza's
                // handling allocates (see `run`).
                "presence" => Box::pin(features::presence::from_client(self, stanza, to)).await,
                _ => Box::pin(features::iq_from_client(self, stanza, to)).await,
            }
            // Counted only now that it is handled (and, for messages, durably logged):
            // an `<a h/>` covering it promises it is safe (XEP-0198 §5, DESIGN.md).
            self.count_handled();
            Ok(())
        }
    }

    /// Counts a handled stanza for XEP-0198, after the messages still being
    /// committed if there are any.
    fn count_handled(&mut self) {
        self.settle_committed();
        if self.uncommitted.is_empty() {
            self.count_one();
        } else {
            self.uncommitted.push_back(None);
        }
    }

    fn count_one(&mut self) {
        if let Some(sm) = &mut self.sm {
            sm.inbound = sm.inbound.wrapping_add(1);
        }
    }

    /// Counts the messages at the front of the queue that are committed by now
    /// (and what was handled after them), without waiting. A commit wakes no
    /// session: the queue is settled when the session next reads a stanza,
    /// and waited on where a count must include it (`<r/>`, a resumption,
    /// the next non-message stanza).
    fn settle_committed(&mut self) {
        while let Some(front) = self.uncommitted.front_mut() {
            if let Some(committed) = front
                && matches!(
                    committed.try_recv(),
                    Err(tokio::sync::oneshot::error::TryRecvError::Empty)
                )
            {
                break;
            }
            self.uncommitted.pop_front();
            self.count_one();
        }
    }

    /// Settles the queue and, when empty, frees it: an idle session keeps none
    /// (a busy one keeps its room between messages).
    fn release_uncommitted(&mut self) {
        self.settle_committed();
        if self.uncommitted.is_empty() {
            self.uncommitted = VecDeque::new();
        }
    }

    /// Waits for the oldest uncommitted message and counts what is done.
    async fn wait_oldest_commit(&mut self) {
        next_committed(&mut self.uncommitted).await;
        self.settle_committed();
    }

    /// Waits until every message this session sent is committed, counting them.
    async fn drain_uncommitted(&mut self) {
        while !self.uncommitted.is_empty() {
            self.wait_oldest_commit().await;
        }
    }

    /// XEP-0198 nonzas: `<enable/>`, `<r/>`, `<a/>`.
    fn handle_sm(&mut self, element: &Element) -> Result<(), (StreamErrorCondition, &'static str)> {
        match element.name.as_str() {
            "enable" => {
                if self.sm.is_some() {
                    // §3: enabling twice is an error.
                    let failed = Element::new(SM, "failed")
                        .child(Element::new(ns::STANZAS, "unexpected-request"));
                    self.replies.push((Reply::Stanza(failed), None));
                    return Ok(());
                }
                self.sm = Some(StreamManagement::default());
                let (enabled, inline) = enable(
                    &self.server,
                    element,
                    &self.bare,
                    self.link_type,
                    self.device.as_deref(),
                );
                self.resume = inline.resume;
                // Stanzas written before <enabled/> are not counted (§4).
                self.replies.push((Reply::Stanza(enabled), None));
            }
            "r" => {
                if let Some(sm) = &self.sm {
                    let answer = Element::new(SM, "a").attr("h", sm.inbound.to_string());
                    self.replies.push((Reply::Stanza(answer), None));
                }
            }
            "a" => {
                if self.sm.is_none() {
                    return Ok(());
                }
                let Some(h) = element.get_attr("h").and_then(|h| h.parse::<u32>().ok()) else {
                    return Err((
                        StreamErrorCondition::BadFormat,
                        "the h attribute must be a 32-bit count",
                    ));
                };
                if self.acknowledged(h).is_err() {
                    // §4: `<handled-count-too-high/>` with undefined-condition.
                    return Err((
                        StreamErrorCondition::UndefinedCondition,
                        "handled-count-too-high",
                    ));
                }
            }
            _ => {
                return Err((
                    StreamErrorCondition::UnsupportedStanzaType,
                    "unsupported stream management element",
                ));
            }
        }
        Ok(())
    }

    fn is_own_address(&self, from: &str) -> bool {
        // As bound (normalised): the usual case, without parsing.
        if from == self.jid.as_str() || from == self.bare.as_str() {
            return true;
        }
        match Jid::new(from) {
            Ok(jid) => match jid.try_as_full() {
                Ok(full) => *full == self.jid,
                Err(bare) => *bare == self.bare,
            },
            Err(_) => false,
        }
    }

    /// Leaves the router, tells contacts this resource is gone, saves the cursor.
    async fn finish(&mut self) {
        if let Some((id, _)) = self.resume.take() {
            self.server.resumable.remove(&id);
        }
        let still_bound = self.server.unbind_session(&self.jid, self.id);
        if still_bound && self.available {
            features::presence::went_offline(self, None).await;
        }
        self.save_cursor(true).await;
    }

    /// Marks the router entry detached (link down, waiting for resumption) or
    /// attached again, so push notifications (XEP-0357) treat the device as offline.
    fn set_detached(&self, detached: bool) {
        self.server
            .router
            .update(&self.jid, self.id, |entry| entry.detached = detached);
    }

    /// Queues a reply for this session's own client.
    pub fn reply(&mut self, stanza: Element) {
        self.replies.push((Reply::Stanza(stanza), None));
    }

    /// Starts delivering the log entries this device has missed (once, at the first
    /// available presence with a non-negative priority).
    pub async fn start_catch_up(&mut self) {
        if self.caught_up || self.backlog_pending {
            return;
        }
        self.backlog_pending = true;
        if self.in_rooms {
            // Group messages that came while the user had no session are in
            // their rooms' logs: copied into this user's log first. (The session
            // is in the router already, so nothing later is missed.)
            if let Err(error) = Box::pin(self.server.store.room_catch_up(&self.username)).await {
                tracing::error!(%error, "copying group messages owed to the user");
            }
        }
        deliver::read_backlog(self).await;
    }

    /// Queues a log entry for this session's own client.
    pub fn reply_logged(&mut self, reply: Reply, seq: i64) {
        self.replies.push((reply, Some(seq)));
    }
}

/// Resolves when the oldest uncommitted message is committed (or its append failed
/// and was answered with an error); at once when the queue is empty.
async fn next_committed(queue: &mut VecDeque<Option<deliver::Committed>>) {
    if let Some(Some(committed)) = queue.front_mut() {
        // An error means the commit's callback was dropped: the writer is gone,
        // nothing more will come; count it so the session can end.
        let _ = committed.await;
    }
}

/// The next takeover of a resumable session; pending forever when there is none.
async fn next_handoff(resume: &mut Option<(String, mpsc::Receiver<Handoff>)>) -> Handoff {
    match resume {
        Some((_, rx)) => match rx.recv().await {
            Some(handoff) => handoff,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}
