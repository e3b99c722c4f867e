//! The session table: which resources of which users are connected to this node,
//! their presence, and the queue to each.
//!
//! The table is sharded by bare JID so that logins and lookups for different users
//! never contend on one lock (DESIGN.md, core idea 4). Locks are held only to read
//! or change the table, never across an `await`.
//!
//! Architecture Invariant: delivering to a session never blocks the sender. Each
//! session has a bounded queue; when it is full the session is too slow to keep up,
//! and it is told to close (its stanzas are not lost for good once the inbox log
//! carries them; see DESIGN.md).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, RwLock};

use crate::queue;
use kith_proto::{Element, FullJid, StreamErrorCondition};

const SHARDS: usize = 64;

/// What a session's writer receives.
#[derive(Debug)]
pub enum Outbound {
    /// A stanza to write to the client (its `to`/`from` already final).
    Stanza(Arc<Element>),
    /// An entry of the user's inbox log, with its sequence number.
    Logged(Arc<Element>, i64),
    /// An entry of the user's inbox log as stored (serialised by
    /// `Element::to_xml`, which declares its namespace: right on every link),
    /// written as it is.
    LoggedXml(Arc<str>, i64),
    /// An entry of the user's inbox log serialised once (by `Element::to_xml`) for
    /// all its recipients, written addressed `to` this one (DESIGN.md: fan-out
    /// serialises once and shares the bytes).
    LoggedShared {
        xml: Arc<str>,
        to: Arc<str>,
        seq: i64,
    },
    /// Entries of the user's inbox log are committed through this number on
    /// another node (`cluster/`): read the log past what was written.
    Wake(i64),
    /// Close the stream with this stream error.
    Close(StreamErrorCondition, &'static str),
}

/// One bound resource.
#[derive(Clone, Debug)]
pub struct SessionEntry {
    pub jid: FullJid,
    /// Unique for the process lifetime, so a stale handle never removes a newer
    /// session that reused the resource.
    pub id: u64,
    pub tx: queue::Sender<Outbound>,
    /// The last available presence broadcast, if the resource is available.
    pub presence: Option<Arc<Element>>,
    pub priority: i8,
    /// Whether the client asked for the roster (it then gets roster pushes).
    pub interested: bool,
    /// Whether the client enabled Message Carbons (XEP-0280).
    pub carbons: bool,
    /// Whether the connection dropped and the session waits to be resumed
    /// (XEP-0198 §5): still bound, but nothing reaches the device meanwhile.
    pub detached: bool,
    /// The device credential the session signed in with (credentials.rs).
    pub device: Option<Arc<str>>,
    /// Ends the session at once, attached or waiting to be resumed.
    pub revoked: Arc<tokio::sync::Notify>,
}

impl SessionEntry {
    /// A session just bound: not available yet, no roster asked for, no
    /// carbons, attached.
    pub fn new(
        jid: FullJid,
        id: u64,
        tx: queue::Sender<Outbound>,
        device: Option<Arc<str>>,
        revoked: Arc<tokio::sync::Notify>,
    ) -> SessionEntry {
        SessionEntry {
            jid,
            id,
            tx,
            presence: None,
            priority: 0,
            interested: false,
            carbons: false,
            detached: false,
            device,
            revoked,
        }
    }

    pub fn available(&self) -> bool {
        self.presence.is_some()
    }

    /// Who the session is in the inbox log (`Session::device_key`).
    pub fn device_key(&self) -> std::borrow::Cow<'_, str> {
        match &self.device {
            Some(id) => crate::credentials::device_resource(id).into(),
            None => self.jid.resource().as_str().into(),
        }
    }

    /// Queues a stanza; a full queue closes the session (it is too slow).
    pub fn send(&self, stanza: Arc<Element>) -> bool {
        self.send_outbound(Outbound::Stanza(stanza))
    }

    /// Queues an inbox log entry. If the session is too slow it is closed, and the
    /// entry stays in the log for the device's next login.
    pub fn send_logged(&self, stanza: Arc<Element>, seq: i64) -> bool {
        self.send_outbound(Outbound::Logged(stanza, seq))
    }

    /// Queues an inbox log entry already serialised for this recipient.
    pub fn send_logged_xml(&self, xml: Arc<str>, seq: i64) -> bool {
        self.send_outbound(Outbound::LoggedXml(xml, seq))
    }

    /// Queues an inbox log entry serialised once for many recipients.
    pub fn send_logged_shared(&self, xml: &Arc<str>, to: &Arc<str>, seq: i64) -> bool {
        self.send_outbound(Outbound::LoggedShared {
            xml: xml.clone(),
            to: to.clone(),
            seq,
        })
    }

    pub(crate) fn send_outbound(&self, outbound: Outbound) -> bool {
        match self.tx.try_send(outbound) {
            Ok(()) => true,
            Err(queue::TrySendError::Full(_)) => {
                tracing::warn!(jid = %self.jid, "session queue full; closing the slow session");
                // The queue is full: this one can't get through either, so the writer
                // notices the closed receiver after draining. Dropping is safe because
                // the connection is being torn down.
                let tx = self.tx.clone();
                tokio::spawn(async move {
                    let _ = tx
                        .send(Outbound::Close(
                            StreamErrorCondition::PolicyViolation,
                            "too slow",
                        ))
                        .await;
                });
                false
            }
            Err(queue::TrySendError::Closed(_)) => false,
        }
    }
}

#[derive(Default)]
struct Shard {
    users: HashMap<String, Vec<SessionEntry>, Hasher>,
}

/// The router's hashing: foldhash, seeded per process. Every message looks up its
/// recipient (and its sender) several times; SipHash, twice per lookup (shard and
/// map), was ≈ 2 % of the worker's time at 60,000 msg/s. Seeded at random per
/// process, so keys that collide can't be worked out in advance.
pub(crate) type Hasher = foldhash::fast::RandomState;

/// The sharded table of local sessions.
pub struct Router {
    shards: Vec<RwLock<Shard>>,
    hasher: Hasher,
}

impl Default for Router {
    fn default() -> Self {
        Router {
            shards: (0..SHARDS).map(|_| RwLock::new(Shard::default())).collect(),
            hasher: Hasher::default(),
        }
    }
}

/// What [`Router::census`] counts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Census {
    pub sessions: usize,
    pub users: usize,
    pub detached: usize,
}

/// Ends a session whose resource a new connection took (RFC 6120 §7.7.2.2):
/// an attached one closes with `<conflict/>`; one waiting to be resumed reads
/// no queue, so it ends at once (XEP-0198 §5), its resumption id with it —
/// resuming it would bring back a session no longer in the table.
fn replaced(old: SessionEntry) {
    if old.detached {
        old.revoked.notify_one();
    } else {
        let _ = old.tx.try_send(Outbound::Close(
            StreamErrorCondition::Conflict,
            "replaced by a new connection",
        ));
    }
}

/// Outcome of [`Router::bind`].
pub enum BindOutcome {
    Bound,
    /// The resource was taken; the older session has been told to close with
    /// `<conflict/>` (RFC 6120 §7.7.2.2, the "override" policy).
    Replaced,
    TooManySessions,
}

impl Router {
    fn shard(&self, bare: &str) -> &RwLock<Shard> {
        &self.shards[(self.hasher.hash_one(bare) as usize) % SHARDS]
    }

    /// Runs `f` on the sessions of `bare`, under a read lock.
    pub fn with_sessions<R>(&self, bare: &str, f: impl FnOnce(&[SessionEntry]) -> R) -> R {
        let shard = self.shard(bare).read().unwrap_or_else(|e| e.into_inner());
        f(shard.users.get(bare).map(Vec::as_slice).unwrap_or(&[]))
    }

    /// [`Router::with_sessions`] of `node@domain`, the bare JID put together
    /// on the stack (the store's writer asks about each entry's owner, by
    /// name: no allocation per message).
    pub fn with_sessions_of<R>(
        &self,
        node: &str,
        domain: &str,
        f: impl FnOnce(&[SessionEntry]) -> R,
    ) -> R {
        let mut buf = [0u8; 128];
        let len = node.len() + 1 + domain.len();
        if let Some(bare) = buf.get_mut(..len) {
            bare[..node.len()].copy_from_slice(node.as_bytes());
            bare[node.len()] = b'@';
            bare[node.len() + 1..].copy_from_slice(domain.as_bytes());
            if let Ok(bare) = std::str::from_utf8(bare) {
                return self.with_sessions(bare, f);
            }
        }
        self.with_sessions(&format!("{node}@{domain}"), f)
    }

    /// A snapshot of one user's sessions.
    pub fn sessions(&self, bare: &str) -> Vec<SessionEntry> {
        self.with_sessions(bare, <[SessionEntry]>::to_vec)
    }

    pub fn has_resource(&self, bare: &str, resource: &str) -> bool {
        self.with_sessions(bare, |sessions| {
            sessions
                .iter()
                .any(|s| s.jid.resource().as_str() == resource)
        })
    }

    pub fn bind(&self, entry: SessionEntry, max_sessions: usize) -> BindOutcome {
        let bare = entry.jid.to_bare();
        let mut shard = self
            .shard(bare.as_str())
            .write()
            .unwrap_or_else(|e| e.into_inner());
        // Most users have one session: room for one, not the four `push` would make.
        let sessions = shard
            .users
            .entry(bare.as_str().to_owned())
            .or_insert_with(|| Vec::with_capacity(1));
        if let Some(index) = sessions
            .iter()
            .position(|s| s.jid.resource() == entry.jid.resource())
        {
            replaced(sessions.remove(index));
            sessions.push(entry);
            return BindOutcome::Replaced;
        }
        if sessions.len() >= max_sessions {
            return BindOutcome::TooManySessions;
        }
        sessions.push(entry);
        BindOutcome::Bound
    }

    /// Closes the session bound to `resource` of `bare` with `<conflict/>`: the
    /// resource was bound on another node (RFC 6120 §7.7.2.2). Returns whether
    /// there was one.
    pub fn kick(&self, bare: &str, resource: &str) -> bool {
        let mut shard = self.shard(bare).write().unwrap_or_else(|e| e.into_inner());
        let Some(sessions) = shard.users.get_mut(bare) else {
            return false;
        };
        let Some(index) = sessions
            .iter()
            .position(|s| s.jid.resource().as_str() == resource)
        else {
            return false;
        };
        let old = sessions.remove(index);
        if sessions.is_empty() {
            shard.users.remove(bare);
        }
        replaced(old);
        true
    }

    /// Removes the session `id`; returns whether it was still bound.
    pub fn unbind(&self, jid: &FullJid, id: u64) -> bool {
        let bare = jid.to_bare();
        let mut shard = self
            .shard(bare.as_str())
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let Some(sessions) = shard.users.get_mut(bare.as_str()) else {
            return false;
        };
        let before = sessions.len();
        sessions.retain(|s| s.id != id);
        let removed = sessions.len() != before;
        if sessions.is_empty() {
            shard.users.remove(bare.as_str());
        }
        removed
    }

    /// Changes the entry of session `id` in place.
    pub fn update(&self, jid: &FullJid, id: u64, f: impl FnOnce(&mut SessionEntry)) {
        let bare = jid.to_bare();
        let mut shard = self
            .shard(bare.as_str())
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = shard
            .users
            .get_mut(bare.as_str())
            .and_then(|sessions| sessions.iter_mut().find(|s| s.id == id))
        {
            f(entry);
        }
    }

    /// Tells every session of `bare` to close (account deleted, password changed).
    pub fn close_user(&self, bare: &str, condition: StreamErrorCondition, text: &'static str) {
        for session in self.sessions(bare) {
            // Waits for queue space so a busy session can't miss its close.
            tokio::spawn(async move {
                let _ = session.tx.send(Outbound::Close(condition, text)).await;
            });
        }
    }

    /// Ends every session of `bare` signed in with device credential `device`
    /// (revoked), including one waiting to be resumed. Returns how many.
    pub fn revoke_device(&self, bare: &str, device: &str) -> usize {
        let mut count = 0;
        self.with_sessions(bare, |sessions| {
            for session in sessions {
                if session.device.as_deref() == Some(device) {
                    // notify_one keeps a permit if the session isn't waiting yet.
                    session.revoked.notify_one();
                    count += 1;
                }
            }
        });
        count
    }

    /// Tells every session on this node that the server is shutting down.
    pub fn close_all(&self) {
        for shard in &self.shards {
            let shard = shard.read().unwrap_or_else(|e| e.into_inner());
            for session in shard.users.values().flatten() {
                let _ = session.tx.try_send(Outbound::Close(
                    StreamErrorCondition::SystemShutdown,
                    "server shutting down",
                ));
            }
        }
    }

    /// Tells every session on this node to read its log past what it wrote
    /// (the cluster's bus was down: wake-ups may be lost).
    pub fn wake_all(&self) {
        for shard in &self.shards {
            let shard = shard.read().unwrap_or_else(|e| e.into_inner());
            for session in shard.users.values().flatten() {
                // The devices a logged message goes to (RFC 6121 §8.5.2.1.1).
                if session.available() && session.priority >= 0 {
                    session.send_outbound(Outbound::Wake(i64::MAX));
                }
            }
        }
    }

    /// Number of bound sessions on this node.
    pub fn count(&self) -> usize {
        self.census().sessions
    }

    /// How many sessions, users with one, and sessions waiting to be resumed
    /// this node holds (one shard locked at a time).
    pub fn census(&self) -> Census {
        let mut census = Census::default();
        for shard in &self.shards {
            let shard = shard.read().unwrap_or_else(|e| e.into_inner());
            census.users += shard.users.len();
            for session in shard.users.values().flatten() {
                census.sessions += 1;
                census.detached += usize::from(session.detached);
            }
        }
        census
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(jid: &str, id: u64) -> (SessionEntry, queue::Receiver<Outbound>) {
        let (tx, rx) = queue::channel(4);
        let jid = FullJid::new(jid).expect("a full JID");
        (SessionEntry::new(jid, id, tx, None, Default::default()), rx)
    }

    #[test]
    fn sessions_are_found_by_node_and_domain_short_or_long() {
        let router = Router::default();
        let long = "n".repeat(200);
        let (short_entry, _short_rx) = entry("alice@example.org/phone", 1);
        let (long_entry, _long_rx) = entry(&format!("{long}@example.org/phone"), 2);
        assert!(matches!(router.bind(short_entry, 4), BindOutcome::Bound));
        assert!(matches!(router.bind(long_entry, 4), BindOutcome::Bound));
        let ids = |node: &str, domain: &str| {
            router.with_sessions_of(node, domain, |sessions| {
                sessions.iter().map(|s| s.id).collect::<Vec<_>>()
            })
        };
        assert_eq!(ids("alice", "example.org"), [1]);
        // Past the stack buffer: the same answer through an allocated name.
        assert_eq!(ids(&long, "example.org"), [2]);
        assert!(ids("alice", "example.com").is_empty());
        assert!(ids("alic", "eexample.org").is_empty());
    }
}
