//! Group chats across nodes: one node at a time hosts every room.
//!
//! A room's state that is not in the store — its occupants and their
//! presence, its cached affiliations and configuration — lives in the memory
//! of the node that hosts it (`features::muc`). In a cluster that node is the
//! one holding the group lease ([`LEASE_KEY`], a PostgreSQL advisory lock on a
//! connection of its own, `kith_store::Lease`), and it alone listens on
//! [`GROUPS`]. Every other node hands what its users send to the groups'
//! domain there as a NATS request ([`Frame::Group`]), answered once the host
//! has handled it (a message committed to the room's log, as a local sender
//! waits for), so a session's stanzas to its groups keep their order and an
//! acknowledgement (XEP-0198) still means stored. The HTTP API's group calls
//! and an account's deletion go the same way ([`Call`], with an [`Answer`]).
//! What the host says to occupants goes out through the bus to whichever node
//! holds their sessions; members' copies are written for every member (their
//! sessions may be on any node) and each member's nodes get a wake-up carrying
//! the copy. The host listens in a NATS queue group, and its room writes are
//! fenced by the lease (`Store::fence_rooms`): a host that lost the lease and
//! has not noticed yet neither shares a stanza with the new one nor writes to
//! the rooms.
//!
//! The lease is taken on demand: at start, and whenever a node finds nobody
//! listening on [`GROUPS`] (the host stopped or lost its database connection);
//! the holder checks its connection every [`LEASE_CHECK`] and, once it fails,
//! stops hosting and forgets its rooms. A new host loads rooms from the store;
//! occupants of the old one are gone with it (clients notice with XEP-0410
//! self-pings and join again), members' logs lose nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use kith_proto::error::StanzaErrorCondition;
use kith_proto::{Element, StanzaError};
use serde::{Deserialize, Serialize};

use super::nats::Unanswered;
use super::{Cluster, Frame, encode};
use crate::Server;

/// The subject the node hosting the groups listens on.
pub(crate) const GROUPS: &str = "kith.groups";

/// The group lease's key (`pg_try_advisory_lock`): "kithgrps".
const LEASE_KEY: i64 = 0x6b69_7468_6772_7073;

/// How often the host checks that its lease still holds.
const LEASE_CHECK: Duration = Duration::from_secs(1);

/// How often a node that is not the host may try to take the lease.
const LEASE_RETRY: Duration = Duration::from_secs(1);

/// How long a node waits for the host to have handled a stanza or a call.
const HOST_WAIT: Duration = Duration::from_secs(10);

/// A lease taken by another node whose subscription has not reached NATS yet
/// (or a host just gone): tried again this often, this many times.
const RETRY_EVERY: Duration = Duration::from_millis(100);
const RETRIES: u32 = 50;

/// The group host's state on this node.
#[derive(Default)]
pub(crate) struct Host {
    hosting: AtomicBool,
    held: tokio::sync::Mutex<Held>,
}

#[derive(Default)]
struct Held {
    lease: Option<kith_store::Lease>,
    sid: Option<u64>,
    /// When this node last tried to take the lease.
    last_try: Option<tokio::time::Instant>,
}

/// A group operation of the HTTP API or of account deletion, run where the
/// groups are hosted.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "call", rename_all = "snake_case")]
pub(crate) enum Call {
    CreateGroup {
        owner: String,
        name: String,
        members: Vec<String>,
        announcement: bool,
    },
    CreateLink {
        room: String,
        requester: String,
    },
    RevokeLink {
        room: String,
        token: String,
        requester: String,
    },
    LinkPreview {
        token: String,
    },
    RedeemLink {
        token: String,
        requester: String,
    },
    AccountDeleted {
        bare: String,
    },
}

/// An invite link as it crosses the bus.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Invite {
    pub token: String,
    pub room: String,
    pub created_by: String,
    pub created_micros: i64,
    pub revoked: bool,
}

impl From<&kith_store::RoomInvite> for Invite {
    fn from(invite: &kith_store::RoomInvite) -> Self {
        Invite {
            token: invite.token.clone(),
            room: invite.room.clone(),
            created_by: invite.created_by.clone(),
            created_micros: invite.created_micros,
            revoked: invite.revoked,
        }
    }
}

impl From<Invite> for kith_store::RoomInvite {
    fn from(invite: Invite) -> Self {
        kith_store::RoomInvite {
            token: invite.token,
            room: invite.room,
            created_by: invite.created_by,
            created_micros: invite.created_micros,
            revoked: invite.revoked,
        }
    }
}

/// What a [`Call`] returns.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub(crate) enum Answer {
    Room {
        jid: String,
    },
    Link {
        invite: Invite,
        url: String,
    },
    Preview {
        link: Option<(Invite, String)>,
    },
    Done,
    Refused {
        condition: String,
        text: Option<String>,
    },
    /// The node asked no longer hosts the groups: ask again.
    NotHost,
}

impl Answer {
    pub(crate) fn refused(error: &StanzaError) -> Answer {
        Answer::Refused {
            condition: error.condition.as_str().to_owned(),
            text: error.text.clone(),
        }
    }

    /// The error a refusal carries, or `unexpected` for an answer of another kind.
    pub(crate) fn into_error(self) -> StanzaError {
        match self {
            Answer::Refused { condition, text } => {
                let condition = StanzaErrorCondition::parse(&condition)
                    .unwrap_or(StanzaErrorCondition::InternalServerError);
                let error = StanzaError::new(condition);
                match text {
                    Some(text) => error.with_text(text),
                    None => error,
                }
            }
            other => {
                tracing::error!(answer = ?other, "an unexpected answer from the group host");
                StanzaError::internal()
            }
        }
    }
}

/// Where a stanza or call for the groups was handled.
pub(crate) enum Handled<T> {
    /// This node hosts the groups: handle it here.
    Here,
    /// The host did (with its answer).
    There(T),
}

impl Cluster {
    /// Whether this node hosts the groups now.
    pub(crate) fn hosts_groups(&self) -> bool {
        self.groups.hosting.load(Ordering::Acquire)
    }

    /// Takes the group lease if nobody holds it; whether this node hosts the
    /// groups afterwards.
    pub(crate) async fn try_host_groups(&self, server: &Arc<Server>) -> bool {
        let mut held = self.groups.held.lock().await;
        if self.hosts_groups() {
            return true;
        }
        // Asked at most once a second: a stanza waiting for a host that has
        // not subscribed yet retries ten times a second, each would connect.
        if held
            .last_try
            .is_some_and(|tried| tried.elapsed() < LEASE_RETRY)
        {
            return false;
        }
        held.last_try = Some(tokio::time::Instant::now());
        let taken = tokio::time::timeout(LEASE_CHECK * 5, server.store.try_lease(LEASE_KEY)).await;
        match taken {
            Ok(Ok(Some(lease))) => {
                // Whatever rooms this node loaded when it hosted them before
                // (or a task still running then loaded since) may have
                // changed under another host.
                server.muc.forget_all();
                // Group messages and membership changes commit only while
                // this lease holds: once it is lost, this node writes nothing
                // more to the rooms, noticed or not (kept after giving up).
                server.store.fence_rooms(lease.fence());
                // Listening before saying so: a stanza handed here from now
                // on is heard. A queue group: should two nodes believe they
                // host the groups for a moment (a lease lost, not yet
                // noticed), a stanza still reaches one of them only.
                let sid = self.nats.subscribe_in_group(GROUPS, "kith-groups");
                self.nats.flush().await;
                held.lease = Some(lease);
                held.sid = Some(sid);
                self.groups.hosting.store(true, Ordering::Release);
                tracing::info!("this node hosts the group chats now");
                true
            }
            Ok(Ok(None)) => false,
            Ok(Err(error)) => {
                tracing::warn!(%error, "taking the group lease");
                false
            }
            Err(_) => {
                tracing::warn!("taking the group lease: the database did not answer in time");
                false
            }
        }
    }

    /// Stops hosting the groups (the lease failed): rooms are forgotten, since
    /// another node may host them from now on.
    async fn give_up_groups(&self, server: &Server) {
        let mut held = self.groups.held.lock().await;
        self.groups.hosting.store(false, Ordering::Release);
        if let Some(sid) = held.sid.take() {
            self.nats.unsubscribe(sid);
        }
        if let Some(lease) = held.lease.take() {
            lease.release().await;
        }
        server.muc.forget_all();
        tracing::warn!("this node no longer hosts the group chats (its lease failed)");
    }

    /// Hands a stanza for the groups' domain to the node hosting them, and
    /// waits until it has handled it; `Here` when this node hosts them (or
    /// has just become the host).
    pub(crate) async fn hand_to_groups(
        &self,
        server: &Arc<Server>,
        stanza: &Element,
    ) -> Result<Handled<()>, StanzaError> {
        let frame = Frame::Group {
            xml: stanza.to_xml(""),
        };
        match self.ask_groups(server, &frame).await? {
            Handled::Here => Ok(Handled::Here),
            Handled::There(Answer::Done) => Ok(Handled::There(())),
            Handled::There(refused) => Err(refused.into_error()),
        }
    }

    /// Runs `call` on the node hosting the groups; `Here` when that is this one.
    pub(crate) async fn call_groups(
        &self,
        server: &Arc<Server>,
        call: Call,
    ) -> Result<Handled<Answer>, StanzaError> {
        self.ask_groups(server, &Frame::GroupCall { call }).await
    }

    async fn ask_groups(
        &self,
        server: &Arc<Server>,
        frame: &Frame,
    ) -> Result<Handled<Answer>, StanzaError> {
        let payload = encode(frame).ok_or_else(StanzaError::internal)?;
        for _ in 0..RETRIES {
            if self.hosts_groups() {
                return Ok(Handled::Here);
            }
            if !self.nats.connected() {
                return Err(StanzaError::service_unavailable()
                    .with_text("this node has lost the cluster's bus"));
            }
            match self
                .nats
                .ask(GROUPS.to_owned(), payload.clone(), HOST_WAIT)
                .await
            {
                Ok(payload) => match serde_json::from_slice::<Answer>(&payload) {
                    // It stopped hosting meanwhile: ask again.
                    Ok(Answer::NotHost) => {}
                    Ok(answer) => return Ok(Handled::There(answer)),
                    Err(error) => {
                        tracing::error!(%error, "an unreadable answer from the group host");
                        return Err(StanzaError::internal());
                    }
                },
                // Nobody hosts them: this node will, unless another was first.
                Err(Unanswered::NoResponders) => {
                    if self.try_host_groups(server).await {
                        return Ok(Handled::Here);
                    }
                }
                Err(Unanswered::Timeout) => {
                    tracing::warn!("the group host did not answer in time");
                    return Err(StanzaError::new(StanzaErrorCondition::RemoteServerTimeout)
                        .with_text("the node hosting the groups did not answer"));
                }
                Err(Unanswered::Dropped(super::nats::Dropped::Full)) => {
                    return Err(StanzaError::service_unavailable()
                        .with_text("the cluster's bus does not keep up"));
                }
                Err(Unanswered::Dropped(super::nats::Dropped::TooLarge)) => {
                    return Err(StanzaError::new(StanzaErrorCondition::NotAcceptable)
                        .with_text("too large to cross the cluster's bus"));
                }
            }
            tokio::time::sleep(RETRY_EVERY).await;
        }
        Err(StanzaError::service_unavailable().with_text("no node hosts the groups"))
    }
}

/// Applies a frame read on [`GROUPS`] (this node hosts the groups, or did):
/// handled on a task of its own, answered once done.
pub(super) fn on_group_frame(server: &Arc<Server>, frame: Frame, reply: Option<&str>) {
    let reply = reply.map(str::to_owned);
    let server = server.clone();
    tokio::spawn(async move {
        let Some(cluster) = &server.cluster else {
            return;
        };
        let answer = match frame {
            _ if !cluster.hosts_groups() => Answer::NotHost,
            Frame::Group { xml } => match super::parse(&server, &xml) {
                Some(stanza) => {
                    crate::features::muc::handle(&server, stanza).await;
                    Answer::Done
                }
                // Not handled: the sender's node says so (and acknowledges nothing).
                None => Answer::refused(
                    &StanzaError::bad_request()
                        .with_text("unreadable on the node hosting the groups"),
                ),
            },
            Frame::GroupCall { call } => crate::features::muc::run_call(&server, call).await,
            _ => return,
        };
        if let (Some(reply), Ok(answer)) = (reply, serde_json::to_vec(&answer)) {
            let _ = cluster.nats.publish(reply, answer);
        }
    });
}

/// Occupants on other nodes, checked at most this many at a time.
const GHOST_CHECKS: usize = 64;

/// Removes occupants whose session no node holds any more: a node that
/// stopped without a word (a crash, a cut) took their sessions with it, and
/// nothing told the host. Local occupants leave through their session's end.
/// Every `[cluster] occupant_check_secs`, on its own task (a long sweep must
/// not hold up the lease's check), the host asks the nodes holding each remote
/// occupant's user whether one has that session (`Frame::Bound`, answered
/// only by a holder). An occupant leaves after two sweeps in a row without an
/// answer, and only while this node's link was up throughout: a slow node or
/// a link that dropped between does not make ghosts of live occupants.
pub(super) async fn sweep_occupants(server: std::sync::Weak<Server>) {
    let mut misses: std::collections::HashMap<String, u32> = std::collections::HashMap::new();
    // Not `every`: the checks below borrow across their `join_all`, which
    // an async closure's future cannot be shown `Send` for.
    loop {
        let every = match server.upgrade() {
            Some(server) => Duration::from_secs(server.config.cluster.occupant_check_secs.max(1)),
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(server) = server.upgrade() else {
            return;
        };
        let Some(cluster) = &server.cluster else {
            return;
        };
        if !cluster.hosts_groups() || !cluster.nats.connected() {
            misses.clear();
            continue;
        }
        // Occupant sessions no local session is: (room, nick, full JID, bare, resource).
        let remote: Vec<(String, String, String, String, String)> = server
            .muc
            .occupant_sessions()
            .await
            .into_iter()
            .filter_map(|(room, nick, full)| {
                let jid = kith_proto::FullJid::new(&full).ok()?;
                let bare = jid.to_bare().to_string();
                let resource = jid.resource().as_str().to_owned();
                (!server.router.has_resource(&bare, &resource))
                    .then_some((room, nick, full, bare, resource))
            })
            .collect();
        let mut missing = Vec::new();
        for chunk in remote.chunks(GHOST_CHECKS) {
            let checks = chunk
                .iter()
                .map(|(room, nick, full, bare, resource)| async move {
                    let bound = cluster.resource_bound(bare, resource).await;
                    (bound == Some(false)).then_some((room, nick, full))
                });
            missing.extend(
                futures::future::join_all(checks)
                    .await
                    .into_iter()
                    .flatten(),
            );
        }
        // The answers are only worth something if the link stayed up.
        if !cluster.nats.connected() {
            misses.clear();
            continue;
        }
        let mut still = std::collections::HashMap::with_capacity(missing.len());
        for (room, nick, full) in missing {
            let count = misses.get(full).copied().unwrap_or(0) + 1;
            if count >= 2 {
                if cluster.hosts_groups() {
                    crate::features::muc::ghost_left(&server, room, nick, full).await;
                }
            } else {
                still.insert(full.clone(), count);
            }
        }
        misses = still;
    }
}

/// Takes the group lease at start if it is free, then keeps checking it.
pub(super) async fn keep_groups(server: std::sync::Weak<Server>) {
    if let Some(server) = server.upgrade()
        && let Some(cluster) = &server.cluster
    {
        cluster.try_host_groups(&server).await;
    }
    super::every(
        server,
        LEASE_CHECK,
        async |server: &Arc<Server>, cluster: &Cluster| {
            if !cluster.hosts_groups() {
                return;
            }
            let alive = {
                let mut held = cluster.groups.held.lock().await;
                match held.lease.as_mut() {
                    Some(lease) => tokio::time::timeout(LEASE_CHECK * 3, lease.alive())
                        .await
                        .unwrap_or(false),
                    None => false,
                }
            };
            if !alive {
                cluster.give_up_groups(server).await;
            }
        },
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_cross_the_bus_unchanged() {
        let invite = Invite {
            token: "t0k".to_owned(),
            room: "g@conference.example".to_owned(),
            created_by: "a@example".to_owned(),
            created_micros: 42,
            revoked: false,
        };
        for answer in [
            Answer::Room {
                jid: "g@conference.example".to_owned(),
            },
            Answer::Link {
                invite: invite.clone(),
                url: "https://example/join/t0k".to_owned(),
            },
            Answer::Preview {
                link: Some((invite, "Friends".to_owned())),
            },
            Answer::Preview { link: None },
            Answer::Done,
            Answer::refused(&StanzaError::forbidden().with_text("not an admin")),
            Answer::NotHost,
        ] {
            let bytes = serde_json::to_vec(&answer).expect("encoded");
            assert_eq!(serde_json::from_slice::<Answer>(&bytes).ok(), Some(answer));
        }
    }

    #[test]
    fn a_refusal_keeps_its_condition_and_text() {
        let error =
            Answer::refused(&StanzaError::forbidden().with_text("not an admin")).into_error();
        assert_eq!(error.condition, StanzaErrorCondition::Forbidden);
        assert_eq!(error.text.as_deref(), Some("not an admin"));
    }
}
