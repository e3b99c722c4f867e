//! Scale-out (DESIGN.md's scale-out row): several nodes serving one domain share
//! one PostgreSQL store and reach each other's sessions over NATS.
//!
//! The bus carries only what the shared store does not:
//! - a *wake-up* once an entry of a user's inbox log is committed: the user's
//!   sessions on other nodes read their log past what they have written
//!   (`Outbound::Wake`), so a wake-up overtaken by a later one loses nothing
//!   (PostgreSQL numbers a user's entries under the row lock of their
//!   counter: whoever reads at a wake-up's number sees every entry before it),
//!   and those lost while a node's link was down, or dropped for a full
//!   outbox while it stalled, are made good by `Resync`.
//!   A wake-up carries the entry itself (up to `WAKE_ENTRY_MAX`): a session
//!   that has written every entry before it writes it without reading the
//!   log (`Outbound::LoggedXml`, the gap rule of `Session::gap_before`);
//! - stanzas that are not logged (presence, chat states, headlines such as PEP
//!   events, iq to a full JID, carbons), with the rule that picks which of the
//!   user's sessions get them (`Select`), applied by the node holding them;
//! - control: a presence probe, a resource bound elsewhere (RFC 6120 §7.7.2.2,
//!   the older session closes), a device revoked, an account deleted, and
//!   cache entries to forget (blocklists, archiving preferences, push
//!   registrations) once changed.
//!
//! The directory is NATS's own interest graph: a node subscribes to a user's
//! subject (`kith.u.<hex of the bare JID>`) while it holds a session of theirs,
//! before that session reads its log, so nothing committed after the read is
//! missed. Every node subscribes to `kith.all` (cache invalidation, `Resync`). Connections
//! are made with `no_echo`: a node never receives its own frames, so the local
//! delivery that precedes every publish is never repeated.
//!
//! Group chats: one node at a time hosts every room, and the others hand it
//! their users' stanzas for the groups' domain (`groups.rs`).

mod groups;
mod nats;

pub(crate) use groups::{Answer, Call, Handled, Invite};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use kith_proto::stream::parse_fragment;
use kith_proto::{Element, StreamErrorCondition};
use serde::{Deserialize, Serialize};

use crate::Server;
use crate::router::{Outbound, SessionEntry};

/// How long an iq to a full JID on another node waits for the node holding the
/// resource to say it took it, before it bounces (RFC 6121 §8.5.3.1). (With no
/// node listening for the user, NATS says so at once.)
const IQ_WAIT: Duration = Duration::from_secs(2);

/// How long "is the user online?" waits for a node to say yes.
const ONLINE_WAIT: Duration = Duration::from_millis(500);
/// How long a node waits for the one holding a session the client resumes
/// to end it (its messages in flight are committed first).
const RESUME_WAIT: Duration = Duration::from_secs(5);

/// The subject every node listens on.
const ALL: &str = "kith.all";

/// The largest log entry a wake-up carries: almost any chat message, while the
/// frames waiting for a slow NATS link stay small. A larger one, or one whose
/// frame the NATS server would not take (its `max_payload`), is read from the log.
const WAKE_ENTRY_MAX: usize = 8 * 1024;

/// Which of a user's sessions get a stanza: the same rules the local delivery
/// applies, applied by the node that holds them.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Select {
    /// The session bound to this resource.
    Resource(String),
    /// Every available session (presence to a bare JID, RFC 6121 §4.3.2).
    Available,
    /// Every available session with a non-negative priority (a message to a
    /// bare JID, RFC 6121 §8.5.2.1.1).
    Deliverable,
    /// Every session that asked for the roster (roster pushes, RFC 6121 §2.1.6).
    Interested,
    /// Every session (XEP-0191 block pushes).
    All,
    /// XEP-0163 §4.3.2: available, non-negative priority, and subscribed to the
    /// node or asking for `NODE+notify` in its caps.
    Pep { node: String, subscribed: bool },
}

impl Select {
    /// Whether `session` gets what is handed out under this rule.
    pub(crate) fn takes(&self, server: &Server, session: &SessionEntry) -> bool {
        match self {
            Select::Resource(resource) => session.jid.resource().as_str() == resource,
            Select::Available => session.available(),
            Select::Deliverable => session.available() && session.priority >= 0,
            Select::Interested => session.interested,
            Select::All => true,
            Select::Pep { node, subscribed } => {
                session.priority >= 0
                    && session.presence.as_ref().is_some_and(|presence| {
                        *subscribed
                            || crate::features::pep::wants(server, &session.jid, presence, node)
                    })
            }
        }
    }
}

/// A cache whose entries a node forgets when another node changes them.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum CacheKind {
    Blocklist,
    MamPrefs,
    Push,
}

/// What crosses the bus, addressed to one user's subject (or to all nodes).
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "k", rename_all = "snake_case")]
enum Frame {
    /// The user's log holds entries through `seq`; `xml`, if there, is entry
    /// `seq` itself, which a session that has written every entry before it
    /// writes at once (any other reads the log, as it does without `xml`).
    Wake {
        seq: i64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        xml: Option<String>,
        /// `xml` is a group message's copy, shared by every member: written
        /// addressed `to` the user (`Outbound::LoggedShared`), not as it is.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        addressed: bool,
    },
    /// A stanza for the sessions `select` picks; `each`: addressed to each
    /// session's full JID.
    Hand {
        select: Select,
        each: bool,
        xml: String,
    },
    /// XEP-0280: `<sent/>` or `<received/>` copies of a message for the user's
    /// carbon-enabled sessions other than `except`.
    Carbon {
        except: String,
        direction: String,
        xml: String,
    },
    /// RFC 6121 §4.3: `from` asks for the current presence of the user's
    /// available sessions (a probe at login, or a subscription just approved).
    Probe { from: String },
    /// RFC 6120 §7.7.2.2: `resource` was bound on another node.
    Conflict { resource: String },
    /// The device credential `device` was revoked.
    Revoke { device: String },
    /// The account was deleted.
    Deleted,
    /// Answered (as a request) by a node holding an available session.
    Online,
    /// Answered (as a request) by a node holding a session bound to this
    /// resource, waiting to be resumed or not (the group host's check for
    /// occupants whose node stopped, `groups.rs`).
    Bound { resource: String },
    /// Answered (as a request) by a node holding a session of this device (its
    /// inbox-log key) that is not waiting to be resumed: push's "is it
    /// online?" (`features::push::device_online`).
    Device { key: String },
    /// The user's available sessions appear unavailable to `to` (blocked, or
    /// no longer subscribed).
    Hide { to: String },
    /// The user's available sessions send their presence again (the photo
    /// hash or a privacy setting changed).
    Rebroadcast,
    /// `owner` approved the user's subscription: their sessions get `owner`'s
    /// last PEP items they want (XEP-0163 §4.3.3).
    PepApproved { owner: String },
    /// Forget `owner`'s entry of a cache (sent to all nodes).
    Forget { cache: CacheKind, owner: String },
    /// A node's link to NATS was down: what it published meanwhile is lost,
    /// so every session reads its log (sent to all nodes).
    Resync,
    /// A stanza for the groups' domain, for the node hosting them (a request,
    /// answered once handled; `groups.rs`).
    Group { xml: String },
    /// An HTTP API call or account deletion for the groups' host (a request,
    /// answered with a `groups::Answer`).
    GroupCall { call: groups::Call },
    /// XEP-0198 §5: the device `device` of `bare` asks another node to resume
    /// the session `previd`, having got `h` stanzas of it. A request to the
    /// node the id names (its own subject), answered once the session has
    /// ended there with the count of stanzas it handled, as text (nothing:
    /// no such session).
    Resume {
        bare: String,
        previd: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        h: u32,
    },
}

/// This node's link to the others.
pub(crate) struct Cluster {
    nats: nats::Nats,
    /// Users with sessions here, and the subscription to their subject.
    users: Mutex<HashMap<String, u64>>,
    /// The server frames are applied to (set by [`Cluster::start`]).
    server: Arc<OnceLock<Weak<Server>>>,
    /// A frame was dropped for a full outbox since the last `Resync` went
    /// out (see [`resync_when_lost`]).
    lost: AtomicBool,
    /// Frames dropped since the start, for metrics.
    dropped: AtomicU64,
    /// Whether this node hosts the group chats (`groups.rs`).
    groups: groups::Host,
    /// This run of this node, in its subject (`kith.n.<tag>`) and its
    /// resumption ids: a `<resume/>` on another node asks this node alone.
    tag: String,
}

/// The link's figures (`metrics.rs`).
pub(crate) struct ClusterMetrics {
    pub connected: bool,
    pub outbox_bytes: usize,
    pub dropped: u64,
    pub groups_host: bool,
}

/// How often a node that dropped frames for a full outbox tries to tell the
/// others to read their logs.
const RESYNC_EVERY: Duration = Duration::from_secs(1);

/// Makes good the wake-ups a full outbox dropped: once a second, if any
/// frame was dropped since, a `Resync` goes to every node (behind whatever
/// still waits, so it arrives once the link keeps up), and each of their
/// sessions reads its log past what it wrote. Tried again while it is
/// dropped too. Presence and the other unlogged frames dropped are lost, as
/// on a connection cut.
async fn resync_when_lost(server: Weak<Server>) {
    every(
        server,
        RESYNC_EVERY,
        async |_: &Arc<Server>, cluster: &Cluster| {
            if cluster.lost.swap(false, Ordering::Relaxed) {
                tracing::info!(
                    "asking every node's sessions to read their logs (frames were dropped)"
                );
                cluster.send(ALL.to_owned(), &Frame::Resync);
            }
        },
    )
    .await;
}

/// Runs `step` every `period`, from one `period` on, while the server lives:
/// a node's periodic cluster work.
async fn every(
    server: Weak<Server>,
    period: Duration,
    mut step: impl AsyncFnMut(&Arc<Server>, &Cluster),
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // An interval's first tick is at once.
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(server) = server.upgrade() else {
            return;
        };
        let Some(cluster) = &server.cluster else {
            return;
        };
        step(&server, cluster).await;
    }
}

/// The subject of a user's sessions.
fn user_subject(bare: &str) -> String {
    use std::fmt::Write;
    let mut subject = String::with_capacity(USER.len() + 2 * bare.len());
    subject.push_str(USER);
    for byte in bare.bytes() {
        let _ = write!(subject, "{byte:02x}");
    }
    subject
}

/// The bare JID a user's subject names.
fn subject_user(subject: &str) -> Option<String> {
    let hex = subject.strip_prefix(USER)?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes = hex
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

/// The prefix of users' subjects.
const USER: &str = "kith.u.";
/// The prefix of one node's own subject.
const NODE: &str = "kith.n.";
/// The length of a node's tag (`Cluster::tag`).
const TAG_LEN: usize = 12;

impl Cluster {
    /// Connects to NATS; `None` when this node serves alone.
    pub(crate) async fn connect(config: &crate::Config) -> anyhow::Result<Option<Cluster>> {
        let Some(url) = &config.cluster.nats else {
            return Ok(None);
        };
        let node = config
            .cluster
            .node
            .clone()
            .unwrap_or_else(|| crate::random_id(8));
        let server: Arc<OnceLock<Weak<Server>>> = Arc::default();
        let handler_server = server.clone();
        let handler: nats::Handler = Box::new(move |event| {
            let Some(server) = handler_server.get().and_then(Weak::upgrade) else {
                return;
            };
            match event {
                nats::Event::Message(delivery) => on_delivery(&server, delivery),
                // Wake-ups published while this node's link was down are
                // gone, its own and others' (which may never have lost theirs):
                // every session of every node reads its log for what it may
                // have missed.
                nats::Event::Reconnected => {
                    server.router.wake_all();
                    if let Some(cluster) = &server.cluster {
                        cluster.send(ALL.to_owned(), &Frame::Resync);
                    }
                }
            }
        });
        let tls = match (&config.cluster.nats_ca, nats::wants_tls(url)) {
            (None, false) => None,
            (ca, _) => Some(nats_tls(ca.as_deref())?),
        };
        let nats = nats::Nats::connect(
            url,
            &format!("kith {node}"),
            tls,
            config.cluster.max_outbox_bytes,
            handler,
        )
        .await?;
        tracing::info!(%node, nats = %url, "joined the cluster");
        Ok(Some(Cluster {
            nats,
            users: Mutex::default(),
            server,
            lost: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            groups: groups::Host::default(),
            tag: crate::random_id(TAG_LEN),
        }))
    }

    /// Starts applying frames to `server`, and listens on the subject every
    /// node shares.
    pub(crate) async fn start(&self, server: &Arc<Server>) {
        let _ = self.server.set(Arc::downgrade(server));
        self.nats.subscribe(ALL.to_owned());
        self.nats.subscribe(self.node_subject(&self.tag));
        self.nats.flush().await;
        tokio::spawn(resync_when_lost(Arc::downgrade(server)));
        if server.config.muc.enabled {
            tokio::spawn(groups::keep_groups(Arc::downgrade(server)));
            tokio::spawn(groups::sweep_occupants(Arc::downgrade(server)));
        }
    }

    fn send(&self, subject: String, frame: &Frame) {
        if let Some(payload) = encode(frame) {
            self.publish(subject, payload);
        }
    }

    pub(crate) fn metrics(&self) -> ClusterMetrics {
        ClusterMetrics {
            connected: self.nats.connected(),
            outbox_bytes: self.nats.waiting_bytes(),
            dropped: self.dropped.load(Ordering::Relaxed),
            groups_host: self.hosts_groups(),
        }
    }

    fn publish(&self, subject: String, payload: Vec<u8>) {
        let outcome = self.nats.publish(subject, payload);
        if outcome.is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        match outcome {
            Ok(()) => {}
            Err(nats::Dropped::Full) => {
                // Only the first of a run is worth a line.
                if !self.lost.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "cluster frames are dropped: the NATS link does not keep up \
                         (cluster.max_outbox_bytes waiting); every node's sessions \
                         will read their logs once it does"
                    );
                }
            }
            Err(nats::Dropped::TooLarge) => {
                tracing::warn!("a cluster frame is dropped: larger than NATS's max_payload");
            }
        }
    }

    fn to_user(&self, bare: &str, frame: &Frame) {
        self.send(user_subject(bare), frame);
    }

    /// A session of `jid` was put in the session table here: listens on the
    /// user's subject (once the NATS server has the interest, so that
    /// whatever is published after this returns reaches this node) and tells
    /// other nodes that the resource is taken.
    pub(crate) async fn bound(&self, jid: &kith_proto::FullJid) {
        let bare = jid.to_bare();
        self.to_user(
            bare.as_str(),
            &Frame::Conflict {
                resource: jid.resource().as_str().to_owned(),
            },
        );
        {
            let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
            if !users.contains_key(bare.as_str()) {
                let sid = self.nats.subscribe(user_subject(bare.as_str()));
                users.insert(bare.as_str().to_owned(), sid);
            }
        }
        // The subscription (this session's or a sibling's just made) is in.
        self.nats.flush().await;
    }

    /// A session of `bare` left the session table here: with none left, stop
    /// listening on the user's subject. Asked of the table itself, under the
    /// same lock as [`Cluster::bound`] (which runs after its session went in):
    /// no count to get wrong when a session is replaced or kicked.
    pub(crate) fn unbound(&self, router: &crate::router::Router, bare: &str) {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        if router.with_sessions(bare, <[SessionEntry]>::is_empty)
            && let Some(sid) = users.remove(bare)
        {
            self.nats.unsubscribe(sid);
        }
    }

    /// Entries of `bare`'s log are committed through `seq`, the last being
    /// `entry` (as stored). A session caught up to it on another node writes it
    /// without reading the log; past [`WAKE_ENTRY_MAX`] bytes it reads it.
    /// `addressed`: the entry is shared by many owners (a group message) and
    /// is written addressed to this one.
    pub(crate) fn wake(&self, bare: &str, seq: i64, entry: Option<&str>, addressed: bool) {
        let subject = user_subject(bare);
        if let Some(entry) = entry.filter(|entry| entry.len() <= WAKE_ENTRY_MAX) {
            let xml = Some(entry.to_owned());
            if let Some(payload) = encode(&Frame::Wake {
                seq,
                xml,
                addressed,
            }) && payload.len() <= self.nats.max_payload()
            {
                return self.publish(subject, payload);
            }
        }
        self.send(
            subject,
            &Frame::Wake {
                seq,
                xml: None,
                addressed: false,
            },
        );
    }

    /// `stanza` for the sessions of `bare` on other nodes that `select` picks.
    pub(crate) fn hand(&self, bare: &str, select: Select, stanza: &Element) {
        self.hand_with(bare, select, false, stanza);
    }

    /// [`Cluster::hand`], with `to` set to each session's full JID.
    pub(crate) fn hand_each(&self, bare: &str, select: Select, stanza: &Element) {
        self.hand_with(bare, select, true, stanza);
    }

    fn hand_with(&self, bare: &str, select: Select, each: bool, stanza: &Element) {
        let xml = stanza.to_xml("");
        self.to_user(bare, &Frame::Hand { select, each, xml });
    }

    /// An iq for `resource` of `bare` on another node; `false` when no node
    /// holds that resource (the caller bounces it).
    pub(crate) async fn hand_iq(&self, bare: &str, resource: &str, iq: &Element) -> bool {
        let frame = Frame::Hand {
            select: Select::Resource(resource.to_owned()),
            each: false,
            xml: iq.to_xml(""),
        };
        self.ask(bare, &frame, IQ_WAIT).await
    }

    /// Whether another node holds an available session of `bare`.
    pub(crate) async fn online(&self, bare: &str) -> bool {
        self.ask(bare, &Frame::Online, ONLINE_WAIT).await
    }

    /// Whether some node holds a session of `bare` bound to `resource`: yes,
    /// or no answer (nobody holds the user, or those who do not this
    /// resource, or no answer in time: the caller asks again before it
    /// believes it), or not asked (`None`, the frame was dropped).
    pub(crate) async fn resource_bound(&self, bare: &str, resource: &str) -> Option<bool> {
        let frame = Frame::Bound {
            resource: resource.to_owned(),
        };
        match self.ask_user(bare, &frame, ONLINE_WAIT).await {
            Ok(_) => Some(true),
            // Nobody holds a session of the user; or those who do, not this one.
            Err(nats::Unanswered::NoResponders | nats::Unanswered::Timeout) => Some(false),
            Err(nats::Unanswered::Dropped(_)) => None,
        }
    }

    /// Whether another node holds a session of device `key` of `bare` that is
    /// not waiting to be resumed.
    pub(crate) async fn device_online(&self, bare: &str, key: &str) -> bool {
        let frame = Frame::Device {
            key: key.to_owned(),
        };
        self.ask(bare, &frame, ONLINE_WAIT).await
    }

    fn node_subject(&self, tag: &str) -> String {
        format!("{NODE}{tag}")
    }

    /// A new XEP-0198 resumption id, naming this run of this node.
    pub(crate) fn resume_id(&self) -> String {
        format!("{}.{}", self.tag, crate::random_id(24))
    }

    /// XEP-0198 §5 across nodes: the client asks this node to resume a session
    /// `previd` of another node (named in the id). That node ends it (a
    /// session can't move between processes) and answers how many stanzas it
    /// had handled, for this node's `<failed h/>`; `None` if it holds no such
    /// session, or is gone (NATS says so at once: nobody listens).
    pub(crate) async fn resume_elsewhere(
        &self,
        owner: &kith_proto::BareJid,
        previd: &str,
        device: Option<&str>,
        h: u32,
    ) -> Option<u32> {
        let (tag, _) = previd.split_once('.')?;
        // A tag as this code makes them, or no subject: a client's id of any
        // length would otherwise become a NATS control line.
        if tag == self.tag
            || tag.len() != TAG_LEN
            || !tag.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return None;
        }
        let frame = Frame::Resume {
            bare: owner.to_string(),
            previd: previd.to_owned(),
            device: device.map(str::to_owned),
            h,
        };
        let payload = encode(&frame)?;
        let answer = self
            .nats
            .ask(self.node_subject(tag), payload, RESUME_WAIT)
            .await
            .ok()?;
        std::str::from_utf8(&answer).ok()?.parse().ok()
    }

    /// Sends `frame` to the nodes holding sessions of `bare` as a request: true
    /// once one of them took it (`read_subject` answers), false when none did
    /// within `wait`, or none listens.
    async fn ask(&self, bare: &str, frame: &Frame, wait: Duration) -> bool {
        self.ask_user(bare, frame, wait).await.is_ok()
    }

    /// [`Cluster::ask`], saying why nobody answered.
    async fn ask_user(
        &self,
        bare: &str,
        frame: &Frame,
        wait: Duration,
    ) -> Result<Vec<u8>, nats::Unanswered> {
        // A frame that does not encode is not sent, as one NATS would not take.
        let payload = encode(frame).ok_or(nats::Unanswered::Dropped(nats::Dropped::TooLarge))?;
        self.nats.ask(user_subject(bare), payload, wait).await
    }

    /// `owner` approved `subscriber`'s subscription: its sessions on other
    /// nodes get `owner`'s last PEP items.
    pub(crate) fn pep_approved(&self, subscriber: &str, owner: &str) {
        self.to_user(
            subscriber,
            &Frame::PepApproved {
                owner: owner.to_owned(),
            },
        );
    }

    /// `bare`'s sessions on other nodes appear unavailable to `to`.
    pub(crate) fn hide(&self, bare: &str, to: &str) {
        self.to_user(bare, &Frame::Hide { to: to.to_owned() });
    }

    /// `bare`'s sessions on other nodes send their presence again.
    pub(crate) fn rebroadcast(&self, bare: &str) {
        self.to_user(bare, &Frame::Rebroadcast);
    }

    /// XEP-0280 copies for `owner`'s sessions on other nodes.
    pub(crate) fn carbons(&self, owner: &str, except: &str, direction: &str, message: &Element) {
        self.to_user(
            owner,
            &Frame::Carbon {
                except: except.to_owned(),
                direction: direction.to_owned(),
                xml: message.to_xml(""),
            },
        );
    }

    /// `from` probes `contact`'s sessions on other nodes.
    pub(crate) fn probe(&self, contact: &str, from: &str) {
        self.to_user(
            contact,
            &Frame::Probe {
                from: from.to_owned(),
            },
        );
    }

    pub(crate) fn revoke(&self, bare: &str, device: &str) {
        self.to_user(
            bare,
            &Frame::Revoke {
                device: device.to_owned(),
            },
        );
    }

    pub(crate) fn deleted(&self, bare: &str) {
        self.to_user(bare, &Frame::Deleted);
    }

    /// Every other node forgets `owner`'s entry of `cache`.
    pub(crate) fn forget(&self, cache: CacheKind, owner: &str) {
        self.send(
            ALL.to_owned(),
            &Frame::Forget {
                cache,
                owner: owner.to_owned(),
            },
        );
    }
}

/// The TLS client for NATS: trusting `ca` (PEM), or the system's store.
fn nats_tls(ca: Option<&std::path::Path>) -> anyhow::Result<tokio_rustls::TlsConnector> {
    use anyhow::Context;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let config = match ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(ca)
                .with_context(|| format!("cluster.nats_ca: reading {}", ca.display()))?
            {
                roots
                    .add(cert.with_context(|| format!("cluster.nats_ca: {}", ca.display()))?)
                    .with_context(|| format!("cluster.nats_ca: {}", ca.display()))?;
            }
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth()
        }
        None => {
            use rustls_platform_verifier::ConfigVerifierExt;
            rustls::ClientConfig::with_platform_verifier()
                .context("the system's trust store, for NATS over TLS")?
        }
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// Applies a frame read from the bus.
fn on_delivery(server: &Arc<Server>, delivery: nats::Delivery<'_>) {
    let frame = match serde_json::from_slice::<Frame>(delivery.payload) {
        Ok(frame) => frame,
        Err(error) => {
            tracing::warn!(%error, subject = delivery.subject, "an unreadable cluster frame");
            return;
        }
    };
    if delivery.subject == ALL {
        on_shared_frame(server, frame);
        return;
    }
    if delivery.subject == groups::GROUPS {
        groups::on_group_frame(server, frame, delivery.reply);
        return;
    }
    if delivery.subject.starts_with(NODE) {
        if let (
            Frame::Resume {
                bare,
                previd,
                device,
                h,
            },
            Some(reply),
        ) = (frame, delivery.reply)
        {
            let (server, reply) = (server.clone(), reply.to_owned());
            tokio::spawn(async move {
                let handled = match kith_proto::BareJid::new(&bare) {
                    Ok(owner) => {
                        crate::session::end_for_elsewhere(
                            &server,
                            &owner,
                            &previd,
                            device.as_deref(),
                            h,
                        )
                        .await
                    }
                    Err(_) => None,
                };
                if let Some(cluster) = &server.cluster {
                    let answer = handled.map(|h| h.to_string()).unwrap_or_default();
                    let _ = cluster.nats.publish(reply, answer.into_bytes());
                }
            });
        }
        return;
    }
    let Some(bare) = subject_user(delivery.subject) else {
        tracing::warn!(
            subject = delivery.subject,
            "a cluster frame on an unknown subject"
        );
        return;
    };
    let taken = on_user_frame(server, &bare, frame);
    // A request (an iq, "online?"): answered only by a node that took it.
    if taken && let (Some(reply), Some(cluster)) = (delivery.reply, &server.cluster) {
        let _ = cluster.nats.publish(reply.to_owned(), Vec::new());
    }
}

fn on_shared_frame(server: &Server, frame: Frame) {
    match frame {
        Frame::Forget { cache, owner } => forget_locally(server, cache, &owner),
        Frame::Resync => server.router.wake_all(),
        _ => {}
    }
}

/// Forgets `owner`'s entry of `cache` on this node.
pub(crate) fn forget_locally(server: &Server, cache: CacheKind, owner: &str) {
    match cache {
        CacheKind::Blocklist => server.blocklists.invalidate(owner),
        CacheKind::MamPrefs => server.mam_prefs.forget(owner),
        CacheKind::Push => server.push.invalidate(owner),
    }
}

/// Applies a frame to this node's sessions of `bare`; returns whether a
/// session took it.
fn on_user_frame(server: &Arc<Server>, bare: &str, frame: Frame) -> bool {
    match frame {
        Frame::Wake {
            seq,
            mut xml,
            addressed,
        } => {
            // Checked as any stanza from the bus is (a session writes it as
            // is), once, and only if a session here takes it.
            let mut entry: Option<Option<Arc<str>>> = None;
            // The devices a logged message goes to (RFC 6121 §8.5.2.1.1).
            server.router.with_sessions(bare, |sessions| {
                for session in sessions
                    .iter()
                    .filter(|s| Select::Deliverable.takes(server, s))
                {
                    let entry = entry.get_or_insert_with(|| {
                        xml.take()
                            .filter(|xml| parse(server, xml).is_some())
                            .map(Arc::from)
                    });
                    session.send_outbound(match entry {
                        Some(xml) if addressed => Outbound::LoggedShared {
                            xml: xml.clone(),
                            to: Arc::from(bare),
                            seq,
                        },
                        Some(xml) => Outbound::LoggedXml(xml.clone(), seq),
                        None => Outbound::Wake(seq),
                    });
                }
            });
            true
        }
        Frame::Hand { select, each, xml } => {
            let Some(stanza) = parse(server, &xml) else {
                return false;
            };
            let shared = Arc::new(stanza);
            server.router.with_sessions(bare, |sessions| {
                let mut taken = false;
                for session in sessions.iter().filter(|s| select.takes(server, s)) {
                    taken = true;
                    if each {
                        let mut copy = (*shared).clone();
                        copy.set_attr("to", session.jid.as_str());
                        session.send(Arc::new(copy));
                    } else {
                        session.send(shared.clone());
                    }
                }
                taken
            })
        }
        Frame::Carbon {
            except,
            direction,
            xml,
        } => {
            let (Some(message), Ok(except)) =
                (parse(server, &xml), kith_proto::FullJid::new(&except))
            else {
                return false;
            };
            crate::features::carbons::copy_locally(
                server, bare, &except, &direction, &message, None,
            );
            true
        }
        Frame::Probe { from } => {
            // Answered through routing, which reaches `from` wherever it is.
            let answers: Vec<Element> = server
                .router
                .sessions(bare)
                .iter()
                .filter_map(|session| {
                    let mut answer = (**session.presence.as_ref()?).clone();
                    answer.set_attr("to", from.as_str());
                    Some(answer)
                })
                .collect();
            if answers.is_empty() {
                return false;
            }
            let server = server.clone();
            tokio::spawn(async move {
                for answer in answers {
                    crate::deliver::route(&server, answer).await;
                }
            });
            true
        }
        Frame::Conflict { resource } => {
            let kicked = server.router.kick(bare, &resource);
            // Its session's own unbinding will find it gone.
            if kicked && let Some(cluster) = &server.cluster {
                cluster.unbound(&server.router, bare);
            }
            kicked
        }
        Frame::Revoke { device } => server.router.revoke_device(bare, &device) > 0,
        Frame::Deleted => {
            server
                .router
                .close_user(bare, StreamErrorCondition::NotAuthorized, "account removed");
            true
        }
        Frame::Online => server.router.with_sessions(bare, |sessions| {
            sessions.iter().any(SessionEntry::available)
        }),
        Frame::Device { key } => crate::features::push::device_online(server, bare, &key),
        Frame::Bound { resource } => server.router.has_resource(bare, &resource),
        Frame::Hide { to } => {
            let (server, bare) = (server.clone(), bare.to_owned());
            tokio::spawn(async move {
                if let Ok(owner) = kith_proto::BareJid::new(&bare) {
                    crate::features::presence::hide_locally(&server, &owner, &to).await;
                }
            });
            true
        }
        Frame::Rebroadcast => {
            let (server, bare) = (server.clone(), bare.to_owned());
            tokio::spawn(async move {
                if let Ok(owner) = kith_proto::BareJid::new(&bare) {
                    crate::features::presence::rebroadcast_locally(&server, &owner).await;
                }
            });
            true
        }
        Frame::PepApproved { owner } => {
            let (server, bare) = (server.clone(), bare.to_owned());
            tokio::spawn(async move {
                if let (Ok(owner), Ok(subscriber)) = (
                    kith_proto::BareJid::new(&owner),
                    kith_proto::BareJid::new(&bare),
                ) {
                    crate::features::pep::send_approved_items(&server, &owner, &subscriber).await;
                }
            });
            true
        }
        Frame::Forget { .. }
        | Frame::Resync
        | Frame::Group { .. }
        | Frame::GroupCall { .. }
        | Frame::Resume { .. } => false,
    }
}

/// A frame as JSON (`None`, logged, if it can't be: not expected).
fn encode(frame: &Frame) -> Option<Vec<u8>> {
    serde_json::to_vec(frame)
        .inspect_err(|error| tracing::error!(%error, "encoding a cluster frame"))
        .ok()
}

fn parse(server: &Server, xml: &str) -> Option<Element> {
    // A stanza crosses the bus re-serialised, which may escape more than the
    // client did (a `>` becomes `&gt;`): its size was checked where it came
    // in, and the frame's by NATS's `max_payload`.
    let mut limits = crate::c2s::limits(server);
    limits.max_stanza_size = limits.max_stanza_size.max(xml.len());
    match parse_fragment(xml.as_bytes(), limits) {
        Ok(stanza) => Some(stanza),
        Err(error) => {
            tracing::warn!(%error, "an unreadable stanza from the cluster");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_subject_is_one_token_whatever_the_jid_holds() {
        let subject = user_subject("al.ice@example.com");
        assert!(subject.starts_with("kith.u."));
        let token = &subject["kith.u.".len()..];
        assert!(token.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(user_subject("a@b"), user_subject("a@c"));
        assert_eq!(
            subject_user(&subject).as_deref(),
            Some("al.ice@example.com")
        );
        assert_eq!(subject_user("kith.u.6"), None);
        assert_eq!(subject_user("kith.all"), None);
    }

    #[test]
    fn frames_read_back_as_written() {
        let frames = [
            Frame::Wake {
                seq: 42,
                xml: None,
                addressed: false,
            },
            Frame::Wake {
                seq: 43,
                xml: Some("<message to='a@b'><body>\"x\"</body></message>".to_owned()),
                addressed: false,
            },
            Frame::Wake {
                seq: 44,
                xml: Some("<message type='groupchat'><body>g</body></message>".to_owned()),
                addressed: true,
            },
            Frame::Hand {
                select: Select::Pep {
                    node: "urn:xmpp:avatar:metadata".to_owned(),
                    subscribed: false,
                },
                each: true,
                xml: "<message xmlns='jabber:client'/>".to_owned(),
            },
            Frame::Forget {
                cache: CacheKind::Blocklist,
                owner: "juliet".to_owned(),
            },
            Frame::Resume {
                bare: "juliet@localhost".to_owned(),
                previd: "abc".to_owned(),
                device: Some("d1".to_owned()),
                h: 7,
            },
            Frame::Resume {
                bare: "juliet@localhost".to_owned(),
                previd: "abc".to_owned(),
                device: None,
                h: 0,
            },
        ];
        for frame in frames {
            let bytes = serde_json::to_vec(&frame).expect("encodes");
            assert_eq!(
                serde_json::from_slice::<Frame>(&bytes).expect("decodes"),
                frame
            );
        }
        assert!(serde_json::from_slice::<Frame>(br#"{"k":"nonsense"}"#).is_err());
    }
}
