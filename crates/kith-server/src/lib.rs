//! The kith server: listeners, stream negotiation, sessions, routing and the
//! protocol features, on top of `kith-proto` (no I/O) and `kith-store` (storage).
//!
//! Start with [`Server::start`]; see ARCHITECTURE.md for the map.
#![forbid(unsafe_code)]

pub mod accounts;
pub mod admin;
mod api;
#[doc(hidden)]
pub mod bench;
mod c2s;
mod cluster;
pub mod config;
mod credentials;
mod csi;
mod datetime;
mod deliver;
mod features;
pub(crate) mod http;
mod limiter;
mod link;
mod maintenance;
mod metrics;
mod queue;
mod router;
mod sasl2;
mod secrets;
mod session;
mod sm;
mod stun;
pub mod tls;
mod tls_stream;
mod turn;
pub mod upload;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use kith_store::Store;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

pub use config::Config;
pub use credentials::device_resource;
use limiter::RateLimiter;
use router::Router;

/// The state every connection shares.
pub struct Server {
    pub config: Config,
    pub domain: String,
    pub store: Store,
    router: Router,
    starttls: Arc<rustls::ServerConfig>,
    direct_tls: Arc<rustls::ServerConfig>,
    https_tls: Arc<rustls::ServerConfig>,
    /// What the three present, replaceable while running (`tls::Certificate`).
    certificate: Arc<tls::Certificate>,
    next_id: AtomicU64,
    started: Instant,
    blocklists: features::blocking::Cache,
    registrations: RateLimiter,
    connections: Arc<limiter::ConnectionCounter>,
    ports: std::sync::OnceLock<(Option<u16>, Option<u16>)>,
    /// Where the STUN listener is bound, if it is (`stun.rs`).
    stun: std::sync::OnceLock<SocketAddr>,
    /// The TURN relay on the STUN listener, if it runs (`turn.rs`).
    relay: std::sync::OnceLock<Arc<turn::Relay>>,
    /// Sessions that can be resumed (XEP-0198), by stream id.
    resumable: session::Resumable,
    /// XEP-0441 archiving preferences, cached.
    mam_prefs: features::mam::PrefsCache,
    /// Per-process secret that makes the SCRAM salts of unknown users stable.
    fake_salt_key: [u8; 32],
    /// The secrets kept in the store, once read (`secrets.rs`).
    secrets: secrets::Secrets,
    /// Push notifications (XEP-0357, Web Push, webhook).
    push: features::push::Push,
    /// The phone-account HTTP API's limiters and SMS client.
    api: api::ApiState,
    /// Clients' XEP-0115 capabilities, for PEP notifications.
    caps: features::pep::caps::Caps,
    /// Resources that sent accounts directed presence (PEP visitors).
    pep_visitors: features::pep::Visitors,
    /// XEP-0363 HTTP File Upload, when enabled.
    upload: Option<upload::Service>,
    /// Group chats (XEP-0045).
    muc: features::muc::Muc,
    /// The other nodes, when this one is part of a cluster.
    cluster: Option<cluster::Cluster>,
}

/// A running server: its bound addresses, and a handle to stop it.
pub struct Running {
    pub server: Arc<Server>,
    pub c2s: Option<SocketAddr>,
    pub c2s_tls: Option<SocketAddr>,
    pub c2s_plain: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub https: Option<SocketAddr>,
    tasks: JoinSet<()>,
}

impl Running {
    /// Waits until a listener fails (they normally run forever).
    pub async fn wait(&mut self) {
        self.tasks.join_next().await;
    }

    /// Stops accepting connections and tells every session the server is shutting down.
    pub async fn shutdown(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        tracing::info!(sessions = self.server.router.count(), "closing sessions");
        self.server.router.close_all();
    }
}

impl Server {
    /// Opens the store, prepares TLS and starts every configured listener.
    pub async fn start(config: Config) -> Result<Running> {
        std::fs::create_dir_all(&config.server.data_dir).with_context(|| {
            format!(
                "creating data directory {}",
                config.server.data_dir.display()
            )
        })?;
        let store = Store::open_with(&config.storage_url(), config.storage.max_connections)
            .await
            .context("opening the store")?;
        let push = features::push::Push::start(&config, &store)
            .await
            .context("preparing push notifications")?;
        let api = api::ApiState::new(&config).context("preparing the HTTP API")?;
        let upload = upload::Service::start(&config)?;
        let certificate = tls::Certificate::load(&tls::ensure_certificate(&config)?)?;
        let starttls = tls::server_config(&certificate, &[])?;
        let direct_tls = tls::server_config(&certificate, &[tls::ALPN_XMPP_CLIENT])?;
        let https_tls = tls::server_config(&certificate, &[b"http/1.1"])?;
        let config_caps = config.pep.caps_cache_size;
        let muc = features::muc::Muc::new(&config);
        let cluster = cluster::Cluster::connect(&config).await?;
        let server = Arc::new(Server {
            domain: config.server.domain.clone(),
            registrations: RateLimiter::new(config.registration.max_per_ip_per_hour, 3600),
            connections: Arc::new(limiter::ConnectionCounter::new(
                config.limits.max_connections_per_ip,
            )),
            config,
            store,
            router: Router::default(),
            starttls,
            direct_tls,
            https_tls,
            certificate,
            next_id: AtomicU64::new(1),
            started: Instant::now(),
            blocklists: features::blocking::Cache::default(),
            fake_salt_key: rand::random(),
            secrets: secrets::Secrets::default(),
            push,
            upload,
            ports: std::sync::OnceLock::new(),
            stun: std::sync::OnceLock::new(),
            relay: std::sync::OnceLock::new(),
            resumable: session::Resumable::default(),
            mam_prefs: features::mam::PrefsCache::default(),
            api,
            caps: features::pep::caps::Caps::new(config_caps),
            pep_visitors: features::pep::Visitors::default(),
            muc,
            cluster,
        });
        if let Some(cluster) = &server.cluster {
            cluster.start(&server).await;
        }

        let mut tasks = JoinSet::new();
        let listen = server.config.listen.clone();
        let c2s = bind(&listen.c2s).await?;
        let c2s_tls = bind(&listen.c2s_tls).await?;
        let c2s_plain = bind(&listen.c2s_plain).await?;
        let c2s_plain_addr = local_addr(&c2s_plain);
        let http = bind(&listen.http).await?;
        let https = bind(&listen.https).await?;
        let stun = match listen.stun.as_str() {
            "" => None,
            addr => Some(
                tokio::net::UdpSocket::bind(addr)
                    .await
                    .with_context(|| format!("listening for STUN on udp {addr}"))?,
            ),
        };
        let stun_addr = stun.as_ref().and_then(|s| s.local_addr().ok());
        if let Some(addr) = stun_addr {
            let _ = server.stun.set(addr);
        }
        // Listening: this process is the server (not a second one that failed
        // to bind, nor the CLI), so the log's tail is its to recover. Entries of
        // users with a session wait there first (SQLite); once delivered they
        // are dropped or, with an archive that keeps them, moved into the log.
        // Weak: the store must not keep the server alive.
        let weak = Arc::downgrade(&server);
        let online: kith_store::Live = Arc::new(move |owner: &str| {
            weak.upgrade().is_some_and(|server| {
                server
                    .router
                    .with_sessions_of(owner, &server.domain, |sessions| !sessions.is_empty())
            })
        });
        let delivered = match server.config.retention() {
            config::Retention::UntilDelivered => kith_store::Delivered::Dropped,
            config::Retention::Forever | config::Retention::Days => kith_store::Delivered::Kept,
        };
        server
            .store
            .set_tail(Some(online), delivered)
            .await
            .context("recovering the inbox log's tail")?;
        let addrs = (
            local_addr(&c2s),
            local_addr(&c2s_tls),
            local_addr(&http),
            local_addr(&https),
        );
        let _ = server
            .ports
            .set((addrs.2.map(|a| a.port()), addrs.3.map(|a| a.port())));
        if let Some(listener) = admin::bind(&server.config).await {
            tasks.spawn(admin::serve(server.clone(), listener));
        }
        tasks.spawn(maintenance::run(server.clone()));
        tasks.spawn(watch_certificate(server.clone()));
        tasks.spawn(upload::sweep_loop(server.clone()));
        tasks.spawn(features::pep::expiry_loop(server.clone()));
        tasks.spawn(features::push::run(server.clone()));
        for (listener, transport) in [
            (c2s, c2s::Transport::Starttls),
            (c2s_tls, c2s::Transport::DirectTls),
            (c2s_plain, c2s::Transport::Plain),
        ] {
            if let Some(listener) = listener {
                tasks.spawn(c2s::accept_loop(server.clone(), listener, transport));
            }
        }
        if let Some(listener) = http {
            tasks.spawn(http::serve(server.clone(), listener, false));
        }
        if let Some(listener) = https {
            tasks.spawn(http::serve(server.clone(), listener, true));
        }
        if let Some(socket) = stun {
            let socket = Arc::new(socket);
            let relay = start_relay(&server, &socket);
            if let Some(relay) = &relay {
                tasks.spawn(relay.clone().sweep());
            }
            tasks.spawn(stun::serve(socket, relay));
        }
        tracing::info!(
            domain = %server.domain,
            c2s = ?addrs.0,
            c2s_tls = ?addrs.1,
            c2s_plain = ?c2s_plain_addr,
            http = ?addrs.2,
            https = ?addrs.3,
            stun = ?stun_addr,
            "kith is serving"
        );
        Ok(Running {
            server,
            c2s: addrs.0,
            c2s_tls: addrs.1,
            c2s_plain: c2s_plain_addr,
            http: addrs.2,
            https: addrs.3,
            tasks,
        })
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The bound plain HTTP port (for XEP-0156 discovery).
    pub fn http_port(&self) -> Option<u16> {
        self.ports.get().and_then(|p| p.0)
    }

    /// The bound HTTPS port.
    pub fn https_port(&self) -> Option<u16> {
        self.ports.get().and_then(|p| p.1)
    }

    /// Reads the TLS certificate and key again (a renewal): new connections
    /// present them; on an error the current ones stay.
    pub fn reload_tls(&self) -> Result<()> {
        self.certificate.reload()
    }

    /// Where the STUN listener is bound, if it runs.
    pub(crate) fn stun_addr(&self) -> Option<SocketAddr> {
        self.stun.get().copied()
    }

    /// The TURN relay, if it runs.
    pub(crate) fn relay(&self) -> Option<&Arc<turn::Relay>> {
        self.relay.get()
    }

    /// Seconds since the server started (XEP-0012 uptime).
    pub fn uptime_secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// A SCRAM secret for a user that does not exist: a salt that stays the same for
    /// that name (so probing twice reveals nothing) and keys that match no password.
    fn fake_secret(&self, username: &str) -> kith_store::ScramSecret {
        use sha1::{Digest, Sha1};
        let mut hasher = Sha1::new();
        hasher.update(self.fake_salt_key);
        hasher.update(username.as_bytes());
        let salt = hasher.finalize()[..16].to_vec();
        kith_store::ScramSecret {
            salt,
            iterations: accounts::SCRAM_ITERATIONS,
            stored_key: rand::random::<[u8; 32]>().to_vec(),
            server_key: rand::random::<[u8; 32]>().to_vec(),
        }
    }

    /// Whether `jid` is an account on this server (local domain, has a node).
    /// Forgets `owner`'s entry of a cache after a change, on every node.
    pub(crate) fn forget(&self, cache: cluster::CacheKind, owner: &str) {
        cluster::forget_locally(self, cache, owner);
        if let Some(cluster) = &self.cluster {
            cluster.forget(cache, owner);
        }
    }

    /// Removes session `id` from the table (and, the user's last here, from the
    /// cluster's directory); returns whether it was still bound.
    pub(crate) fn unbind_session(&self, jid: &kith_proto::FullJid, id: u64) -> bool {
        let removed = self.router.unbind(jid, id);
        if removed && let Some(cluster) = &self.cluster {
            cluster.unbound(&self.router, jid.to_bare().as_str());
        }
        removed
    }

    pub fn is_local_user(&self, jid: &kith_proto::Jid) -> bool {
        jid.node().is_some() && jid.domain().as_str() == self.domain
    }
}

/// The TURN relay on the STUN listener's socket, if `[calls]` wants one and
/// knows the address to relay from.
fn start_relay(
    server: &Arc<Server>,
    socket: &Arc<tokio::net::UdpSocket>,
) -> Option<Arc<turn::Relay>> {
    let calls = &server.config.calls;
    if !calls.relay || calls.turn_host.is_some() {
        return None;
    }
    let bound = socket.local_addr().ok()?.ip();
    let Some(ip) = calls
        .relay_ip
        .or((!bound.is_unspecified()).then_some(bound))
    else {
        tracing::info!("no TURN relay: set [calls] relay_ip to this host's public address");
        return None;
    };
    // The configured secret lets other nodes' credentials work here too.
    let secret = match &calls.turn_secret {
        Some(secret) => secret.as_bytes().to_vec(),
        None => rand::random::<[u8; 32]>().to_vec(),
    };
    let relay = turn::Relay::new(
        socket.clone(),
        ip,
        secret,
        &server.domain,
        calls.relay_allow_private,
        calls.max_relays,
    );
    let _ = server.relay.set(relay.clone());
    Some(relay)
}

/// Reloads the TLS certificate when its files change (a renewal by certbot or
/// the like), checked every `[tls] reload_check_secs`.
async fn watch_certificate(server: Arc<Server>) {
    let secs = server.config.tls.reload_check_secs;
    if secs == 0 {
        // Only SIGHUP reloads; a task of the server's set must not end.
        return std::future::pending().await;
    }
    let mut every = tokio::time::interval(std::time::Duration::from_secs(secs));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match server.certificate.reload_if_changed() {
            Ok(true) => tracing::info!("TLS certificate reloaded: its files changed"),
            Ok(false) => {}
            Err(error) => {
                tracing::error!(error = %format!("{error:#}"), "TLS certificate files changed but don't make a certificate; keeping the current one");
            }
        }
    }
}

async fn bind(addr: &str) -> Result<Option<TcpListener>> {
    if addr.is_empty() {
        return Ok(None);
    }
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    Ok(Some(listener))
}

fn local_addr(listener: &Option<TcpListener>) -> Option<SocketAddr> {
    listener.as_ref().and_then(|l| l.local_addr().ok())
}

/// Current time as unix microseconds.
/// A configured duration in seconds as microseconds, saturating.
pub(crate) fn secs_to_micros(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1_000_000)).unwrap_or(i64::MAX)
}

pub(crate) fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// A new archive id (XEP-0359 stanza-id) for an inbox-log entry made at
/// `at_micros` (the entry's own time, exactly: the store finds the entry by
/// its id through that time, `kith_store::archive_id`).
pub(crate) fn archive_id(at_micros: i64) -> String {
    kith_store::archive_id(at_micros, &random_id(kith_store::ARCHIVE_ID_RANDOM))
}

/// A random identifier of `len` alphanumeric characters.
pub(crate) fn random_id(len: usize) -> String {
    use rand::Rng;
    use rand::distr::Alphanumeric;
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_ids_sort_by_time_and_differ() {
        let start = now_micros();
        let ids: Vec<String> = (0..50).map(|i| archive_id(start + i * 50)).collect();
        for id in &ids {
            assert_eq!(id.len(), 21);
            assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
        }
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(sorted, ids, "later ids sort after earlier ones");
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
        assert_ne!(
            archive_id(start),
            archive_id(start),
            "same time, different ids"
        );
    }
}
