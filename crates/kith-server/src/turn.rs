//! A TURN relay for calls (RFC 8656, over UDP, relaying UDP): for two devices
//! that can't reach each other directly, each gets a relayed address on this
//! server, and what reaches it from a peer the device has permitted is passed
//! on to the device, and back. It shares the STUN listener's socket
//! (`stun.rs`).
//!
//! Only devices with a credential may allocate: the long-term credential
//! mechanism (RFC 8489 §9.2) with the time-limited username and password that
//! XEP-0215 hands out (`features::calls`), checked here from the same secret
//! without asking anyone. Nonces are stateless (a time and a MAC). Peers in
//! loopback and private ranges are refused unless `[calls] relay_allow_private`
//! (§21: a relay must not become a way into the server's own network).
//!
//! State is per allocation, keyed by the device's address (its 5-tuple on one
//! UDP socket): the relayed socket and the task that reads it, the
//! permissions and the channels, each with its expiry.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::net::UdpSocket;

use crate::stun::{
    self, ERROR, INDICATION, MESSAGE_INTEGRITY, Message, NONCE, REALM, REQUEST, SUCCESS, USERNAME,
    Writer,
};

const ALLOCATE: u16 = 0x0003;
const REFRESH: u16 = 0x0004;
const SEND: u16 = 0x0006;
const DATA_INDICATION: u16 = 0x0007;
const CREATE_PERMISSION: u16 = 0x0008;
const CHANNEL_BIND: u16 = 0x0009;
const CHANNEL_NUMBER: u16 = 0x000C;
const LIFETIME: u16 = 0x000D;
const XOR_PEER_ADDRESS: u16 = 0x0012;
const DATA: u16 = 0x0013;
const XOR_RELAYED_ADDRESS: u16 = 0x0016;
const REQUESTED_TRANSPORT: u16 = 0x0019;
/// What a TURN request may carry that this relay knows.
const KNOWN: &[u16] = &[
    USERNAME,
    MESSAGE_INTEGRITY,
    REALM,
    NONCE,
    CHANNEL_NUMBER,
    LIFETIME,
    XOR_PEER_ADDRESS,
    DATA,
    REQUESTED_TRANSPORT,
];
/// §7.2: UDP, the one transport relayed.
const UDP: u8 = 17;
const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// §9: a permission lasts five minutes unless refreshed.
const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// §12: a channel binding lasts ten minutes.
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
const NONCE_LIFETIME_SECS: u64 = 600;
/// Allocations one user, or one address, may hold at once.
const MAX_PER_USER: usize = 8;
const MAX_PER_ADDRESS: usize = 16;
/// Peers one allocation may permit at once (§9: each an address).
const MAX_PERMISSIONS: usize = 64;

/// The relay: its secret, its limits and the allocations.
pub(crate) struct Relay {
    socket: Arc<UdpSocket>,
    /// The address relayed sockets bind to, and advertise.
    ip: IpAddr,
    /// The listener's own address (asked once: every datagram checks it).
    listener_ip: Option<IpAddr>,
    secret: Vec<u8>,
    nonce_key: [u8; 32],
    realm: String,
    allow_private: bool,
    max_allocations: usize,
    allocations: Mutex<HashMap<SocketAddr, Allocation>>,
    /// Datagrams and their bytes relayed, both ways, for metrics.
    relayed: AtomicU64,
    relayed_bytes: AtomicU64,
}

/// The relay's figures (`metrics.rs`).
pub(crate) struct RelayMetrics {
    pub allocations: usize,
    pub datagrams: u64,
    pub bytes: u64,
}

struct Allocation {
    username: String,
    relay: Arc<UdpSocket>,
    /// `relay`'s address, which devices are told.
    relayed: SocketAddr,
    expires: Instant,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, (SocketAddr, Instant)>,
    /// Reads `relay`; stopped with the allocation.
    reader: tokio::task::JoinHandle<()>,
}

impl Allocation {
    /// Whether the allocation is live and permits `peer`'s address (§9).
    fn admits(&self, peer: SocketAddr, now: Instant) -> bool {
        self.expires > now
            && self
                .permissions
                .get(&peer.ip().to_canonical())
                .is_some_and(|until| *until > now)
    }

    /// Permits (or refreshes) `ip` for [`PERMISSION_LIFETIME`]; past
    /// [`MAX_PERMISSIONS`] live ones, 508.
    fn permit(&mut self, ip: IpAddr, now: Instant) -> Result<(), (u16, &'static str)> {
        self.permissions.retain(|_, until| *until > now);
        let ip = ip.to_canonical();
        if !self.permissions.contains_key(&ip) && self.permissions.len() >= MAX_PERMISSIONS {
            return Err((508, "Insufficient Capacity"));
        }
        self.permissions.insert(ip, now + PERMISSION_LIFETIME);
        Ok(())
    }
}

/// The user a TURN username (`expiry:user`) names.
fn user_of(username: &str) -> &str {
    username.split_once(':').map_or(username, |(_, user)| user)
}

impl Drop for Allocation {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Relay {
    /// A relay on `socket`, relaying from `ip`, checking credentials made
    /// from `secret`.
    pub(crate) fn new(
        socket: Arc<UdpSocket>,
        ip: IpAddr,
        secret: Vec<u8>,
        realm: &str,
        allow_private: bool,
        max_allocations: usize,
    ) -> Arc<Relay> {
        let listener_ip = socket.local_addr().ok().map(|a| a.ip());
        Arc::new(Relay {
            socket,
            ip,
            listener_ip,
            secret,
            nonce_key: rand::random(),
            realm: realm.to_owned(),
            allow_private,
            max_allocations,
            allocations: Mutex::default(),
            relayed: AtomicU64::new(0),
            relayed_bytes: AtomicU64::new(0),
        })
    }

    pub(crate) fn metrics(&self) -> RelayMetrics {
        let now = Instant::now();
        RelayMetrics {
            allocations: self
                .allocations()
                .values()
                .filter(|a| a.expires > now)
                .count(),
            datagrams: self.relayed.load(Ordering::Relaxed),
            bytes: self.relayed_bytes.load(Ordering::Relaxed),
        }
    }

    fn count(&self, bytes: usize) {
        self.relayed.fetch_add(1, Ordering::Relaxed);
        self.relayed_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }

    /// The secret TURN credentials are made from (`features::calls`).
    pub(crate) fn secret(&self) -> &[u8] {
        &self.secret
    }

    fn allocations(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Allocation>> {
        // Every change leaves the map consistent: a panic elsewhere can't break it.
        self.allocations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets allocations whose lifetime is over (their sockets close).
    pub(crate) async fn sweep(self: Arc<Relay>) {
        let mut every = tokio::time::interval(Duration::from_secs(30));
        loop {
            every.tick().await;
            let now = Instant::now();
            self.allocations().retain(|_, a| a.expires > now);
        }
    }

    /// Handles a STUN message that is not a Binding request; the answer, if
    /// it gets one.
    pub(crate) fn handle(
        self: &Arc<Self>,
        message: &Message<'_>,
        client: SocketAddr,
    ) -> Option<Vec<u8>> {
        match (message.method(), message.class()) {
            (SEND, INDICATION) => {
                self.send_indication(message, client);
                None
            }
            (ALLOCATE | REFRESH | CREATE_PERMISSION | CHANNEL_BIND, REQUEST) => {
                Some(self.request(message, client))
            }
            // §6.3: other indications and responses are dropped.
            _ => None,
        }
    }

    /// An authenticated request's answer (§9.2.4 checks first).
    fn request(self: &Arc<Self>, message: &Message<'_>, client: SocketAddr) -> Vec<u8> {
        let method = message.method();
        let fail = |code: u16, reason: &str, key: Option<&[u8]>| {
            let mut answer = Writer::new(method | ERROR, message.transaction);
            answer.error(code, reason);
            answer.finish(key)
        };
        let unknown = message.unknown_required(KNOWN);
        if !unknown.is_empty() {
            let mut answer = Writer::new(method | ERROR, message.transaction);
            answer.unknown_attributes(&unknown);
            return answer.finish(None);
        }
        // §9.2.4: no credentials yet: 401 with a realm and a nonce.
        let (Some(username), Some(_), Some(nonce)) = (
            message.get(USERNAME),
            message.get(MESSAGE_INTEGRITY),
            message.get(NONCE),
        ) else {
            return self.challenge(message, client, 401, "Unauthorized");
        };
        if message.get(REALM) != Some(self.realm.as_bytes()) {
            return self.challenge(message, client, 401, "Unauthorized");
        }
        let Ok(username) = std::str::from_utf8(username) else {
            return self.challenge(message, client, 401, "Unauthorized");
        };
        let Some(key) = self.key_for(username) else {
            return self.challenge(message, client, 401, "Unauthorized");
        };
        if !message.integrity_ok(&key) {
            return self.challenge(message, client, 401, "Unauthorized");
        }
        if !self.nonce_ok(nonce, client) {
            return self.challenge(message, client, 438, "Stale Nonce");
        }
        let answer = match method {
            ALLOCATE => self.allocate(message, client, username),
            REFRESH => self.refresh(message, client, username),
            CREATE_PERMISSION => self.permit(message, client, username),
            _ => self.bind_channel(message, client, username),
        };
        match answer {
            Ok(writer) => writer.finish(Some(&key)),
            Err((code, reason)) => fail(code, reason, Some(&key)),
        }
    }

    /// A 401 or 438 with the realm and a fresh nonce.
    fn challenge(
        &self,
        message: &Message<'_>,
        client: SocketAddr,
        code: u16,
        reason: &str,
    ) -> Vec<u8> {
        let mut answer = Writer::new(message.method() | ERROR, message.transaction);
        answer.error(code, reason);
        answer.attribute(REALM, self.realm.as_bytes());
        answer.attribute(NONCE, self.nonce(client).as_bytes());
        answer.finish(None)
    }

    /// The long-term key for `username` if it is a credential this relay
    /// made that has not expired (`expiry:user`).
    fn key_for(&self, username: &str) -> Option<[u8; 16]> {
        use md5::Digest as _;
        let (expiry, _) = username.split_once(':')?;
        if expiry.parse::<u64>().ok()? <= unix_secs() {
            return None;
        }
        let password = crate::features::calls::turn_password(&self.secret, username)?;
        let digest = md5::Md5::digest(format!("{username}:{}:{password}", self.realm).as_bytes());
        Some(digest.into())
    }

    /// A nonce good for [`NONCE_LIFETIME_SECS`] from this address: its expiry
    /// and a MAC of it, nothing stored.
    fn nonce(&self, client: SocketAddr) -> String {
        let expiry = unix_secs() + NONCE_LIFETIME_SECS;
        format!("{expiry:x}-{}", self.nonce_mac(expiry, client))
    }

    fn nonce_ok(&self, nonce: &[u8], client: SocketAddr) -> bool {
        let Some((expiry, mac)) = std::str::from_utf8(nonce)
            .ok()
            .and_then(|n| n.split_once('-'))
        else {
            return false;
        };
        let Ok(expiry) = u64::from_str_radix(expiry, 16) else {
            return false;
        };
        expiry > unix_secs() && mac == self.nonce_mac(expiry, client)
    }

    fn nonce_mac(&self, expiry: u64, client: SocketAddr) -> String {
        use hmac::{Hmac, Mac};
        let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(&self.nonce_key) else {
            return String::new();
        };
        mac.update(&expiry.to_be_bytes());
        mac.update(client.to_string().as_bytes());
        mac.finalize().into_bytes()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// §7.2: a relayed address for `client`.
    fn allocate(
        self: &Arc<Self>,
        message: &Message<'_>,
        client: SocketAddr,
        username: &str,
    ) -> Result<Writer, (u16, &'static str)> {
        let mut allocations = self.allocations();
        if allocations
            .get(&client)
            .is_some_and(|a| a.expires > Instant::now())
        {
            return Err((437, "Allocation Mismatch"));
        }
        match message.get(REQUESTED_TRANSPORT) {
            Some([UDP, ..]) => {}
            Some(_) => return Err((442, "Unsupported Transport Protocol")),
            None => return Err((400, "Bad Request")),
        }
        let now = Instant::now();
        allocations.retain(|_, a| a.expires > now);
        // A user gets a fresh credential (a new expiry) at every ask: counted
        // by the user, not the credential.
        let user = user_of(username);
        let of_user = allocations
            .values()
            .filter(|a| user_of(&a.username) == user)
            .count();
        let of_address = allocations.keys().filter(|c| c.ip() == client.ip()).count();
        if allocations.len() >= self.max_allocations
            || of_user >= MAX_PER_USER
            || of_address >= MAX_PER_ADDRESS
        {
            return Err((486, "Allocation Quota Reached"));
        }
        let relay = std::net::UdpSocket::bind(SocketAddr::new(self.ip, 0))
            .and_then(|socket| {
                socket.set_nonblocking(true)?;
                UdpSocket::from_std(socket)
            })
            .map_err(|error| {
                tracing::warn!(%error, "TURN: binding a relayed address");
                (508, "Insufficient Capacity")
            })?;
        let relay = Arc::new(relay);
        let relayed = relay
            .local_addr()
            .map_err(|_| (508, "Insufficient Capacity"))?;
        // §7.2: 0 means nothing for an Allocate (only a Refresh ends one).
        let lifetime = requested_lifetime(message)
            .filter(|l| !l.is_zero())
            .unwrap_or(DEFAULT_LIFETIME);
        let reader = tokio::spawn(read_peers(Arc::downgrade(self), relay.clone(), client));
        allocations.insert(
            client,
            Allocation {
                username: username.to_owned(),
                relay,
                relayed,
                expires: now + lifetime,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                reader,
            },
        );
        tracing::debug!(%relayed, "TURN: allocated");
        let mut answer = Writer::new(ALLOCATE | SUCCESS, message.transaction);
        answer.attribute(
            XOR_RELAYED_ADDRESS,
            &stun::xor_address(relayed, &message.transaction),
        );
        answer.attribute(LIFETIME, &(lifetime.as_secs() as u32).to_be_bytes());
        answer.attribute(
            stun::XOR_MAPPED_ADDRESS,
            &stun::xor_address(client, &message.transaction),
        );
        Ok(answer)
    }

    /// §8: a new lifetime, or 0 to end the allocation.
    fn refresh(
        &self,
        message: &Message<'_>,
        client: SocketAddr,
        username: &str,
    ) -> Result<Writer, (u16, &'static str)> {
        let mut allocations = self.allocations();
        let allocation = owned(&mut allocations, client, username)?;
        let lifetime = requested_lifetime(message).unwrap_or(DEFAULT_LIFETIME);
        if lifetime.is_zero() {
            allocations.remove(&client);
        } else {
            allocation.expires = Instant::now() + lifetime;
        }
        let mut answer = Writer::new(REFRESH | SUCCESS, message.transaction);
        answer.attribute(LIFETIME, &(lifetime.as_secs() as u32).to_be_bytes());
        Ok(answer)
    }

    /// §9: peers (by address) whose datagrams may reach the device.
    fn permit(
        &self,
        message: &Message<'_>,
        client: SocketAddr,
        username: &str,
    ) -> Result<Writer, (u16, &'static str)> {
        let peers: Vec<SocketAddr> = message
            .all(XOR_PEER_ADDRESS)
            .map(|value| stun::read_xor_address(value, &message.transaction))
            .collect::<Option<_>>()
            .ok_or((400, "Bad Request"))?;
        if peers.is_empty() {
            return Err((400, "Bad Request"));
        }
        let mut allocations = self.allocations();
        if !peers.iter().all(|peer| self.peer_ok(*peer, &allocations)) {
            return Err((403, "Forbidden"));
        }
        let allocation = owned(&mut allocations, client, username)?;
        let now = Instant::now();
        // §9.2: all or none: room for every new one, or 508 before any.
        allocation.permissions.retain(|_, until| *until > now);
        let new: std::collections::HashSet<IpAddr> = peers
            .iter()
            .map(|peer| peer.ip().to_canonical())
            .filter(|ip| !allocation.permissions.contains_key(ip))
            .collect();
        if allocation.permissions.len() + new.len() > MAX_PERMISSIONS {
            return Err((508, "Insufficient Capacity"));
        }
        for peer in peers {
            allocation.permit(peer.ip(), now)?;
        }
        Ok(Writer::new(
            CREATE_PERMISSION | SUCCESS,
            message.transaction,
        ))
    }

    /// §11: a channel number for one peer (and a permission for its address).
    fn bind_channel(
        &self,
        message: &Message<'_>,
        client: SocketAddr,
        username: &str,
    ) -> Result<Writer, (u16, &'static str)> {
        let number = message
            .get(CHANNEL_NUMBER)
            .and_then(|v| Some(u16::from_be_bytes([*v.first()?, *v.get(1)?])))
            .filter(|n| (0x4000..=0x4FFF).contains(n))
            .ok_or((400, "Bad Request"))?;
        let peer = message
            .get(XOR_PEER_ADDRESS)
            .and_then(|v| stun::read_xor_address(v, &message.transaction))
            .ok_or((400, "Bad Request"))?;
        let mut allocations = self.allocations();
        if !self.peer_ok(peer, &allocations) {
            return Err((403, "Forbidden"));
        }
        let allocation = owned(&mut allocations, client, username)?;
        let now = Instant::now();
        // §11.2: a number is one peer's, and a peer has one number.
        let taken = allocation
            .channels
            .iter()
            .any(|(n, (p, until))| *until > now && ((*n == number) != (*p == peer)));
        if taken {
            return Err((400, "Bad Request"));
        }
        allocation.permit(peer.ip(), now)?;
        allocation.channels.retain(|_, (_, until)| *until > now);
        allocation
            .channels
            .insert(number, (peer, now + CHANNEL_LIFETIME));
        Ok(Writer::new(CHANNEL_BIND | SUCCESS, message.transaction))
    }

    /// §10.2: a Send indication, relayed to a permitted peer (or dropped).
    fn send_indication(&self, message: &Message<'_>, client: SocketAddr) {
        let (Some(peer), Some(data)) = (
            message
                .get(XOR_PEER_ADDRESS)
                .and_then(|v| stun::read_xor_address(v, &message.transaction)),
            message.get(DATA),
        ) else {
            return;
        };
        self.to_peer(client, peer, data);
    }

    /// §12.5: a ChannelData message from the device, relayed to its channel's peer.
    pub(crate) fn channel_data(&self, datagram: &[u8], client: SocketAddr) {
        let (Some(number), Some(len)) = (
            datagram.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]])),
            datagram
                .get(2..4)
                .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]]))),
        ) else {
            return;
        };
        let Some(data) = datagram.get(4..4 + len) else {
            return;
        };
        let peer = {
            let allocations = self.allocations();
            let Some(allocation) = allocations.get(&client) else {
                return;
            };
            match allocation.channels.get(&number) {
                Some((peer, until)) if *until > Instant::now() => *peer,
                _ => return,
            }
        };
        self.to_peer(client, peer, data);
    }

    fn to_peer(&self, client: SocketAddr, peer: SocketAddr, data: &[u8]) {
        let allocations = self.allocations();
        let Some(allocation) = allocations.get(&client) else {
            return;
        };
        if !allocation.admits(peer, Instant::now()) || !self.peer_ok(peer, &allocations) {
            return;
        }
        // UDP: a datagram that can't go at once is dropped, as the network would.
        if allocation.relay.try_send_to(data, peer).is_ok() {
            self.count(data.len());
        }
    }

    /// §21: whether datagrams may be relayed to and from `peer`. On this
    /// server's own addresses only another live allocation's relayed address
    /// is (two devices both on relayed candidates), never its services;
    /// elsewhere see [`Relay::peer_allowed`]. Asked when permitting and for
    /// every datagram, as permissions go by address, not port.
    fn peer_ok(&self, peer: SocketAddr, allocations: &HashMap<SocketAddr, Allocation>) -> bool {
        let ip = embedded_v4(peer.ip().to_canonical());
        if ip == self.ip || Some(ip) == self.listener_ip {
            let now = Instant::now();
            return allocations.values().any(|a| {
                a.expires > now && a.relayed.port() == peer.port() && a.relayed.ip() == ip
            });
        }
        self.peer_allowed(ip)
    }

    /// Whether an address that is not this server's may be a peer: not
    /// unspecified or multicast, nor, unless `relay_allow_private`, loopback,
    /// private and other non-public ranges, also where IPv6 embeds an IPv4
    /// address.
    fn peer_allowed(&self, ip: IpAddr) -> bool {
        let ip = embedded_v4(ip.to_canonical());
        if ip.is_unspecified() || ip.is_multicast() {
            return false;
        }
        if self.allow_private {
            return true;
        }
        match ip {
            IpAddr::V4(v4) => {
                let [a, b, ..] = v4.octets();
                !(v4.is_loopback()
                    || v4.is_private()
                    || v4.is_link_local()
                    || v4.is_broadcast()
                    || v4.is_documentation()
                    // 0.0.0.0/8 ("this network") and 240.0.0.0/4 (reserved).
                    || a == 0
                    || a >= 240
                    // 100.64.0.0/10, carrier-grade NAT (RFC 6598).
                    || (a == 100 && b & 0xC0 == 64))
            }
            IpAddr::V6(v6) => {
                !(v6.is_loopback() || v6.is_unique_local() || v6.is_unicast_link_local())
            }
        }
    }
}

/// The IPv4 address an IPv6 one carries, for the ranges that do: NAT64
/// (64:ff9b::/96), 6to4 (2002::/16) and IPv4-compatible (::/96); else `ip`.
fn embedded_v4(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    let o = v6.octets();
    let segments = v6.segments();
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] || segments[..6] == [0; 6] {
        IpAddr::from([o[12], o[13], o[14], o[15]])
    } else if segments[0] == 0x2002 {
        IpAddr::from([o[2], o[3], o[4], o[5]])
    } else {
        ip
    }
}

/// The allocation of `client`, which must belong to `username` (§9.2.4's
/// 441 otherwise), or 437 when there is none.
fn owned<'a>(
    allocations: &'a mut HashMap<SocketAddr, Allocation>,
    client: SocketAddr,
    username: &str,
) -> Result<&'a mut Allocation, (u16, &'static str)> {
    match allocations.get_mut(&client) {
        Some(allocation) if allocation.expires > Instant::now() => {
            if allocation.username == username {
                Ok(allocation)
            } else {
                Err((441, "Wrong Credentials"))
            }
        }
        _ => Err((437, "Allocation Mismatch")),
    }
}

/// The LIFETIME asked for, capped at [`MAX_LIFETIME`]; 0 stays 0 (a refresh
/// ending the allocation), anything shorter than the default is the default.
fn requested_lifetime(message: &Message<'_>) -> Option<Duration> {
    let value = message.get(LIFETIME)?;
    let secs = u32::from_be_bytes(value.try_into().ok()?);
    let asked = Duration::from_secs(u64::from(secs));
    Some(if secs == 0 {
        Duration::ZERO
    } else {
        asked.clamp(DEFAULT_LIFETIME, MAX_LIFETIME)
    })
}

/// Reads what peers send to an allocation's relayed address and hands what a
/// permission admits to the device: as ChannelData on the peer's channel, or
/// in a Data indication (§11.3, §12.6). Ends with the allocation.
async fn read_peers(relay: std::sync::Weak<Relay>, socket: Arc<UdpSocket>, client: SocketAddr) {
    let mut buf = vec![0u8; stun::MAX_DATAGRAM];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let Some(relay) = relay.upgrade() else {
            return;
        };
        let data = &buf[..len];
        let framed = {
            let allocations = relay.allocations();
            let Some(allocation) = allocations.get(&client) else {
                return;
            };
            let now = Instant::now();
            if !allocation.admits(peer, now) || !relay.peer_ok(peer, &allocations) {
                continue;
            }
            let channel = allocation
                .channels
                .iter()
                .find(|(_, (p, until))| *p == peer && *until > now)
                .map(|(n, _)| *n);
            match channel {
                Some(number) => {
                    let mut framed = Vec::with_capacity(4 + len);
                    framed.extend_from_slice(&number.to_be_bytes());
                    framed.extend_from_slice(&(len as u16).to_be_bytes());
                    framed.extend_from_slice(data);
                    framed
                }
                None => {
                    let transaction: [u8; 12] = rand::random();
                    let mut indication = Writer::new(DATA_INDICATION | INDICATION, transaction);
                    indication.attribute(XOR_PEER_ADDRESS, &stun::xor_address(peer, &transaction));
                    indication.attribute(DATA, data);
                    indication.finish(None)
                }
            }
        };
        if relay.socket.send_to(&framed, client).await.is_ok() {
            relay.count(len);
        }
    }
}

fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"a-secret-of-some-length";

    /// A relay on a loopback socket, relaying from `ip`.
    async fn relay_at(ip: &str, allow_private: bool, max: usize) -> Arc<Relay> {
        let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        Relay::new(
            socket,
            ip.parse().unwrap(),
            SECRET.to_vec(),
            "localhost",
            allow_private,
            max,
        )
    }

    fn key(username: &str) -> [u8; 16] {
        use md5::Digest as _;
        let password = crate::features::calls::turn_password(SECRET, username).unwrap();
        md5::Md5::digest(format!("{username}:localhost:{password}").as_bytes()).into()
    }

    /// A request of `method` with these attributes, signed with `username`'s key.
    fn request(
        method: u16,
        attributes: &[(u16, Vec<u8>)],
        signed: Option<(&str, &[u8])>,
    ) -> Vec<u8> {
        let mut writer = Writer::new(method | REQUEST, rand::random());
        for (kind, value) in attributes {
            writer.attribute(*kind, value);
        }
        match signed {
            Some((username, nonce)) => {
                writer.attribute(USERNAME, username.as_bytes());
                writer.attribute(REALM, b"localhost");
                writer.attribute(NONCE, nonce);
                writer.finish(Some(&key(username)))
            }
            None => writer.finish(None),
        }
    }

    fn error_code(answer: &[u8]) -> Option<u16> {
        let message = Message::parse(answer)?;
        let value = message.get(stun::ERROR_CODE)?;
        Some(u16::from(value[2]) * 100 + u16::from(value[3]))
    }

    fn peer(addr: &str) -> (u16, Vec<u8>) {
        (
            XOR_PEER_ADDRESS,
            stun::xor_address(addr.parse().unwrap(), &[0; 12]),
        )
    }

    #[tokio::test]
    async fn an_allocation_takes_a_credential_and_a_permission_a_public_peer() {
        let relay = relay_at("127.0.0.1", false, 10).await;
        let client: SocketAddr = "203.0.113.5:40000".parse().unwrap();
        let transport = (REQUESTED_TRANSPORT, vec![UDP, 0, 0, 0]);
        let ask = |bytes: Vec<u8>| {
            relay
                .handle(&Message::parse(&bytes).unwrap(), client)
                .unwrap()
        };

        // §9.2.4: without credentials, 401 with the realm and a nonce.
        let challenge = ask(request(ALLOCATE, std::slice::from_ref(&transport), None));
        assert_eq!(error_code(&challenge), Some(401));
        let nonce = Message::parse(&challenge)
            .unwrap()
            .get(NONCE)
            .unwrap()
            .to_vec();

        let username = format!("{}:alice@localhost", unix_secs() + 60);
        let allocated = ask(request(
            ALLOCATE,
            std::slice::from_ref(&transport),
            Some((&username, &nonce)),
        ));
        let message = Message::parse(&allocated).unwrap();
        assert_eq!(
            message.kind,
            ALLOCATE | SUCCESS,
            "{:?}",
            error_code(&allocated)
        );
        assert!(
            message.integrity_ok(&key(&username)),
            "signed with the same key"
        );
        let relayed = stun::read_xor_address(
            message.get(XOR_RELAYED_ADDRESS).unwrap(),
            &message.transaction,
        )
        .unwrap();
        assert_eq!(relayed.ip(), "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(message.get(LIFETIME), Some(&600u32.to_be_bytes()[..]));
        // A second allocation for the same address is a mismatch.
        let again = ask(request(
            ALLOCATE,
            std::slice::from_ref(&transport),
            Some((&username, &nonce)),
        ));
        assert_eq!(error_code(&again), Some(437));

        // Private peers are refused (§21); a public one is permitted.
        let private = ask(request(
            CREATE_PERMISSION,
            &[peer("10.1.2.3:9")],
            Some((&username, &nonce)),
        ));
        assert_eq!(error_code(&private), Some(403));
        let loopback = ask(request(
            CREATE_PERMISSION,
            &[peer("127.0.0.1:9")],
            Some((&username, &nonce)),
        ));
        assert_eq!(error_code(&loopback), Some(403));
        let public = ask(request(
            CREATE_PERMISSION,
            &[peer("8.8.8.8:9")],
            Some((&username, &nonce)),
        ));
        assert_eq!(
            Message::parse(&public).unwrap().kind,
            CREATE_PERMISSION | SUCCESS
        );

        // Another user's credential can't touch this allocation.
        let mallory = format!("{}:mallory@localhost", unix_secs() + 60);
        let refresh = ask(request(REFRESH, &[], Some((&mallory, &nonce))));
        assert_eq!(error_code(&refresh), Some(441));
        // A channel outside 0x4000–0x4FFF is refused; a refresh of 0 ends it.
        let channel = (CHANNEL_NUMBER, vec![0x30, 0, 0, 0]);
        let bad = ask(request(
            CHANNEL_BIND,
            &[channel, peer("8.8.8.8:9")],
            Some((&username, &nonce)),
        ));
        assert_eq!(error_code(&bad), Some(400));
        let end = ask(request(
            REFRESH,
            &[(LIFETIME, vec![0, 0, 0, 0])],
            Some((&username, &nonce)),
        ));
        assert_eq!(Message::parse(&end).unwrap().kind, REFRESH | SUCCESS);
        assert!(relay.allocations().is_empty());
    }

    #[tokio::test]
    async fn expired_credentials_bad_nonces_and_other_transports_are_refused() {
        let relay = relay_at("127.0.0.1", false, 10).await;
        let client: SocketAddr = "203.0.113.5:40000".parse().unwrap();
        let ask = |bytes: Vec<u8>| {
            relay
                .handle(&Message::parse(&bytes).unwrap(), client)
                .unwrap()
        };
        let nonce = relay.nonce(client);
        let udp = (REQUESTED_TRANSPORT, vec![UDP, 0, 0, 0]);
        let expired = format!("{}:alice@localhost", unix_secs() - 1);
        let answer = ask(request(
            ALLOCATE,
            std::slice::from_ref(&udp),
            Some((&expired, nonce.as_bytes())),
        ));
        assert_eq!(error_code(&answer), Some(401));
        let username = format!("{}:alice@localhost", unix_secs() + 60);
        let stale = format!("{:x}-0000", unix_secs() - 1);
        let answer = ask(request(
            ALLOCATE,
            &[udp],
            Some((&username, stale.as_bytes())),
        ));
        assert_eq!(error_code(&answer), Some(438));
        // A nonce is bound to the address it was given to.
        let elsewhere = relay.nonce("203.0.113.6:40000".parse().unwrap());
        let tcp = (REQUESTED_TRANSPORT, vec![6, 0, 0, 0]);
        let answer = ask(request(
            ALLOCATE,
            std::slice::from_ref(&tcp),
            Some((&username, elsewhere.as_bytes())),
        ));
        assert_eq!(error_code(&answer), Some(438));
        let answer = ask(request(
            ALLOCATE,
            &[tcp],
            Some((&username, nonce.as_bytes())),
        ));
        assert_eq!(error_code(&answer), Some(442));
    }

    #[tokio::test]
    async fn quotas_hold_whatever_credentials_a_user_collects() {
        let relay = relay_at("127.0.0.1", false, 100).await;
        let udp = (REQUESTED_TRANSPORT, vec![UDP, 0, 0, 0]);
        // Eight allocations, each from a new port with a new credential; the ninth is refused.
        for n in 0..=MAX_PER_USER {
            let client: SocketAddr = format!("203.0.113.5:{}", 40_000 + n).parse().unwrap();
            let username = format!("{}:alice@localhost", unix_secs() + 60 + n as u64);
            let nonce = relay.nonce(client);
            // LIFETIME 0 on an Allocate is the default, not an allocation born dead.
            let bytes = request(
                ALLOCATE,
                &[udp.clone(), (LIFETIME, vec![0, 0, 0, 0])],
                Some((&username, nonce.as_bytes())),
            );
            let answer = relay
                .handle(&Message::parse(&bytes).unwrap(), client)
                .unwrap();
            if n < MAX_PER_USER {
                let message = Message::parse(&answer).unwrap();
                assert_eq!(message.get(LIFETIME), Some(&600u32.to_be_bytes()[..]));
            } else {
                assert_eq!(error_code(&answer), Some(486));
            }
        }
        // Permissions are capped per allocation.
        let client: SocketAddr = "203.0.113.5:40000".parse().unwrap();
        let username = format!("{}:alice@localhost", unix_secs() + 60);
        let nonce = relay.nonce(client);
        let peers: Vec<(u16, Vec<u8>)> = (0..=MAX_PERMISSIONS)
            .map(|n| peer(&format!("8.8.{}.{}:9", n / 200, n % 200 + 1)))
            .collect();
        let bytes = request(
            CREATE_PERMISSION,
            &peers,
            Some((&username, nonce.as_bytes())),
        );
        let answer = relay
            .handle(&Message::parse(&bytes).unwrap(), client)
            .unwrap();
        assert_eq!(error_code(&answer), Some(508));
    }

    #[tokio::test]
    async fn the_server_itself_and_embedded_private_addresses_are_no_peers() {
        let open = relay_at("127.0.0.1", true, 10).await;
        let none = HashMap::new();
        assert!(
            !open.peer_ok("127.0.0.1:5222".parse().unwrap(), &none),
            "its own address, even on a LAN"
        );
        assert!(open.peer_ok("127.0.0.2:5222".parse().unwrap(), &none));
        let strict = relay_at("192.0.2.10", false, 10).await;
        for refused in [
            "192.0.2.10:9",
            "10.1.2.3:9",
            "[64:ff9b::a01:203]:9",
            "[2002:a01:203::1]:9",
            "[::a01:203]:9",
            "0.1.2.3:9",
            "240.0.0.1:9",
            "100.64.0.1:9",
            "[fd00::1]:9",
            "[::1]:9",
        ] {
            assert!(
                !strict.peer_ok(refused.parse().unwrap(), &none),
                "{refused}"
            );
        }
        for allowed in [
            "8.8.8.8:9",
            "[2001:4860:4860::8888]:9",
            "[64:ff9b::808:808]:9",
        ] {
            assert!(strict.peer_ok(allowed.parse().unwrap(), &none), "{allowed}");
        }
    }

    #[tokio::test]
    async fn two_devices_on_relayed_candidates_reach_each_other_and_nothing_else_here() {
        let relay = relay_at("127.0.0.1", false, 10).await;
        let udp = (REQUESTED_TRANSPORT, vec![UDP, 0, 0, 0]);
        let mut relayed = Vec::new();
        let mut signed = Vec::new();
        for (n, user) in ["alice", "bob"].iter().enumerate() {
            let client: SocketAddr = format!("203.0.113.{}:40000", n + 1).parse().unwrap();
            let username = format!("{}:{user}@localhost", unix_secs() + 60);
            let nonce = relay.nonce(client);
            let bytes = request(
                ALLOCATE,
                std::slice::from_ref(&udp),
                Some((&username, nonce.as_bytes())),
            );
            let answer = relay
                .handle(&Message::parse(&bytes).unwrap(), client)
                .unwrap();
            let message = Message::parse(&answer).unwrap();
            relayed.push(
                stun::read_xor_address(
                    message.get(XOR_RELAYED_ADDRESS).unwrap(),
                    &message.transaction,
                )
                .unwrap(),
            );
            signed.push((client, username, nonce));
        }
        let (alice, username, nonce) = &signed[0];
        let ask = |peer: SocketAddr| {
            let attributes = [(XOR_PEER_ADDRESS, stun::xor_address(peer, &[0; 12]))];
            let bytes = request(
                CREATE_PERMISSION,
                &attributes,
                Some((username, nonce.as_bytes())),
            );
            relay
                .handle(&Message::parse(&bytes).unwrap(), *alice)
                .unwrap()
        };
        // Bob's relayed address is a peer; the server's own listener is not.
        let to_bob = ask(relayed[1]);
        assert_eq!(
            Message::parse(&to_bob).unwrap().kind,
            CREATE_PERMISSION | SUCCESS
        );
        let listener = relay.socket.local_addr().unwrap();
        assert_eq!(error_code(&ask(listener)), Some(403));
        let other_port = (1..)
            .map(|n| SocketAddr::new(relayed[1].ip(), relayed[1].port().wrapping_add(n)))
            .find(|addr| !relayed.contains(addr) && *addr != listener)
            .unwrap();
        assert_eq!(error_code(&ask(other_port)), Some(403));
    }
}
