//! A NATS core client (publish, subscribe, request) on one TCP connection, made
//! for the cluster's shape: a subscription per user a node holds a session of,
//! so tens of thousands of them. async-nats gives every subscription a channel
//! whose first block holds 32 messages (≈ 6.5 KiB): it took an idle session from
//! 7.3 to 14.2 KiB (BENCHMARKS.md, session 28). Here a subscription is a line
//! sent to the server and a number, and messages go to one handler as they are
//! read.
//!
//! The protocol (docs.nats.io, "Client Protocol"): the server opens with `INFO`;
//! the client sends `CONNECT` (headers and `no_responders` on, `echo` off: a
//! node never hears itself), then `SUB`, `UNSUB`, `PUB`, `PING`; the server sends
//! `MSG`, `HMSG` (a request nobody subscribes to is answered at once with the
//! status 503), `PING`, `PONG`, `+OK`, `-ERR`. A lost connection is made again
//! with back-off and every subscription sent again; what is published meanwhile
//! is dropped (the cluster's frames are hints over the shared store, see
//! `cluster/mod.rs`), requests in flight time out.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsConnector;

/// The longest protocol line read (an `INFO` with many cluster URLs included).
const MAX_LINE: usize = 64 * 1024;
/// How long a connection attempt (TCP, `INFO`, `CONNECT`, `PONG`) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Back-off between connection attempts after a connection is lost.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// A `PING` to the server this often; a connection with this many unanswered
/// is taken for lost (a host gone or a network cut sends no end of stream).
const PING_EVERY: Duration = Duration::from_secs(5);
const PINGS_OUT_MAX: u32 = 3;
/// How long [`Nats::flush`] waits for the server.
const FLUSH_WAIT: Duration = Duration::from_secs(2);
/// How long one write to the server may take before the connection is taken
/// for lost: as long as the `PING`s' patience (a write that blocks keeps
/// them from being sent, and a host gone sends no end of stream).
const WRITE_WAIT: Duration = Duration::from_secs(PING_EVERY.as_secs() * PINGS_OUT_MAX as u64);

/// Why a publish was not sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// The publishes waiting for the connection hold their limit of bytes
    /// (a slow or stalled link).
    Full,
    /// Larger than the server takes (its `max_payload`).
    TooLarge,
}

/// A message read from a subscription.
pub(crate) struct Delivery<'a> {
    pub subject: &'a str,
    pub reply: Option<&'a str>,
    pub payload: &'a [u8],
}

/// What the connection's task hands out.
pub(crate) enum Event<'a> {
    /// A message of a subscription.
    Message(Delivery<'a>),
    /// The connection was lost and is back, every subscription made again:
    /// what was published meanwhile is gone.
    Reconnected,
}

/// Called for every event, on the connection's task: must not block.
pub(crate) type Handler = Box<dyn Fn(Event<'_>) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub(crate) enum NatsError {
    #[error("{0:?} is not a NATS address (nats://[user:password@]host:port)")]
    Address(String),
    #[error("connecting to NATS at {0}: {1}")]
    Io(String, std::io::Error),
    #[error("NATS at {0} did not answer in time")]
    Timeout(String),
    #[error("NATS at {0} refused the connection: {1}")]
    Refused(String, String),
    #[error(
        "NATS at {0} requires TLS: name it tls://{0} in [cluster] nats (and a private CA in nats_ca)"
    )]
    TlsRequired(String),
    #[error("TLS with NATS at {0}: {1}")]
    Tls(String, std::io::Error),
    #[error("NATS at {0} is too old: it has no message headers (2.2 or later needed)")]
    NoHeaders(String),
    #[error("NATS at {0} broke the protocol: {1}")]
    Protocol(String, String),
}

/// One server to connect to.
#[derive(Clone, Debug)]
struct Server {
    /// host:port
    addr: String,
    user: Option<String>,
    pass: Option<String>,
    /// `tls://`: TLS whether or not the server asks for it.
    tls: bool,
}

/// Whether any of `urls` (comma-separated) asks for TLS.
pub(crate) fn wants_tls(urls: &str) -> bool {
    urls.split(',').any(|url| url.trim().starts_with("tls://"))
}

fn parse_servers(urls: &str) -> Result<Vec<Server>, NatsError> {
    urls.split(',')
        .map(|url| {
            let url = url.trim();
            let tls = url.starts_with("tls://");
            let rest = url
                .strip_prefix("nats://")
                .or_else(|| url.strip_prefix("tls://"))
                .unwrap_or(url);
            let (auth, addr) = match rest.rsplit_once('@') {
                Some((auth, addr)) => (Some(auth), addr),
                None => (None, rest),
            };
            let addr = addr.trim_end_matches('/');
            if addr.is_empty() || url.contains("://") && !url.starts_with("nats://") && !tls {
                return Err(NatsError::Address(url.to_owned()));
            }
            let addr = if addr
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
            {
                addr.to_owned()
            } else {
                format!("{addr}:4222")
            };
            let (user, pass) = match auth.map(|a| a.split_once(':')) {
                Some(Some((user, pass))) => (Some(user.to_owned()), Some(pass.to_owned())),
                Some(None) => (auth.map(str::to_owned), None),
                None => (None, None),
            };
            Ok(Server {
                addr,
                user,
                pass,
                tls,
            })
        })
        .collect()
}

enum Ctl {
    Sub { sid: u64, subject: String },
    Unsub { sid: u64 },
    Flush(oneshot::Sender<()>),
}

struct Publish {
    subject: String,
    reply: Option<String>,
    payload: Vec<u8>,
}

/// Requests waiting for their answer, by the token that ends their reply
/// subject: the answer's payload, or `None` when nobody subscribes.
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Option<Vec<u8>>>>>>;

/// Why a request got no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Unanswered {
    /// Nobody subscribes to the subject (the server's status 503, at once).
    NoResponders,
    /// Nobody answered in time (or the connection was lost meanwhile).
    Timeout,
    /// Not sent (see [`Dropped`]).
    Dropped(Dropped),
}

/// A connection to NATS (made again whenever it is lost).
pub(crate) struct Nats {
    ctl: mpsc::UnboundedSender<Ctl>,
    publishes: mpsc::UnboundedSender<Publish>,
    /// Bytes of payload waiting in `publishes`, at most `max_waiting`.
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
    /// Whether a connection is up (for metrics).
    connected: Arc<AtomicBool>,
    next_sid: AtomicU64,
    next_token: AtomicU64,
    /// `_INBOX.<random>.`: replies to this connection's requests.
    inbox: String,
    pending: Pending,
    /// The server's `max_payload` (from its `INFO`).
    max_payload: Arc<std::sync::atomic::AtomicUsize>,
}

impl Nats {
    /// Connects to the first of `urls` (comma-separated) that answers, and keeps
    /// the connection up; `handler` gets every message of every subscription.
    /// `tls`: for `tls://` addresses and servers that require TLS. At most
    /// `max_waiting` bytes of payload wait for the connection; past that a
    /// publish is dropped ([`Dropped::Full`]).
    pub(crate) async fn connect(
        urls: &str,
        name: &str,
        tls: Option<TlsConnector>,
        max_waiting: usize,
        handler: Handler,
    ) -> Result<Nats, NatsError> {
        let servers = parse_servers(urls)?;
        let mut failure = None;
        let mut first = None;
        for server in &servers {
            match handshake(server, name, tls.as_ref()).await {
                Ok(link) => {
                    first = Some(link);
                    break;
                }
                Err(error) => failure = Some(error),
            }
        }
        let Some(link) = first else {
            return Err(failure.unwrap_or_else(|| NatsError::Address(urls.to_owned())));
        };
        let inbox = format!("_INBOX.{}.", crate::random_id(16));
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let (publishes, publishes_rx) = mpsc::unbounded_channel();
        let waiting = Arc::new(AtomicUsize::new(0));
        let connected = Arc::new(AtomicBool::new(false));
        let pending = Pending::default();
        let max_payload = Arc::new(std::sync::atomic::AtomicUsize::new(link.max_payload));
        let mut subs = HashMap::new();
        // sid 0: this connection's replies.
        subs.insert(0, format!("{inbox}*"));
        let task = Task {
            servers,
            name: name.to_owned(),
            tls,
            ctl: ctl_rx,
            publishes: publishes_rx,
            waiting: waiting.clone(),
            connected: connected.clone(),
            handler,
            subs,
            inbox: inbox.clone(),
            pending: pending.clone(),
            max_payload: max_payload.clone(),
        };
        tokio::spawn(task.run(link));
        Ok(Nats {
            ctl,
            publishes,
            waiting,
            max_waiting,
            connected,
            next_sid: AtomicU64::new(1),
            next_token: AtomicU64::new(1),
            inbox,
            pending,
            max_payload,
        })
    }

    /// Subscribes to `subject`; the number unsubscribes.
    pub(crate) fn subscribe(&self, subject: String) -> u64 {
        let sid = self.next_sid.fetch_add(1, Ordering::Relaxed);
        let _ = self.ctl.send(Ctl::Sub { sid, subject });
        sid
    }

    /// Subscribes to `subject` in queue group `queue`: NATS hands each message
    /// to one member of the group only.
    pub(crate) fn subscribe_in_group(&self, subject: &str, queue: &str) -> u64 {
        // `SUB <subject> <queue> <sid>`: kept as the line's arguments.
        self.subscribe(format!("{subject} {queue}"))
    }

    pub(crate) fn unsubscribe(&self, sid: u64) {
        let _ = self.ctl.send(Ctl::Unsub { sid });
    }

    /// Resolves once the server has read everything sent before (a `PING`
    /// answered), the connection is lost, or [`FLUSH_WAIT`] has passed.
    pub(crate) async fn flush(&self) {
        let (done, flushed) = oneshot::channel();
        if self.ctl.send(Ctl::Flush(done)).is_ok() {
            let _ = tokio::time::timeout(FLUSH_WAIT, flushed).await;
        }
    }

    /// Publishes, or says why it had to be dropped.
    pub(crate) fn publish(&self, subject: String, payload: Vec<u8>) -> Result<(), Dropped> {
        self.send(Publish {
            subject,
            reply: None,
            payload,
        })
    }

    /// Whether the connection is up.
    pub(crate) fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Bytes of payload waiting to be written.
    pub(crate) fn waiting_bytes(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// The largest payload the server takes (its `INFO`'s `max_payload`).
    pub(crate) fn max_payload(&self) -> usize {
        self.max_payload.load(Ordering::Relaxed)
    }

    fn send(&self, publish: Publish) -> Result<(), Dropped> {
        let size = publish.payload.len();
        // The server closes the connection over a message past its limit.
        if size > self.max_payload() {
            return Err(Dropped::TooLarge);
        }
        // Counted before it is queued, so the task never takes away more
        // than was added.
        self.waiting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |waiting| {
                (waiting + size <= self.max_waiting).then_some(waiting + size)
            })
            .map_err(|_| Dropped::Full)?;
        self.publishes.send(publish).map_err(|returned| {
            self.waiting
                .fetch_sub(returned.0.payload.len(), Ordering::Relaxed);
            // The connection's task is gone: nothing will be sent again.
            Dropped::Full
        })
    }

    /// Publishes `payload` as a request and returns the first answer's payload
    /// within `wait`. Nobody subscribing to the subject is known at once (the
    /// server's status 503), not after `wait`.
    pub(crate) async fn ask(
        &self,
        subject: String,
        payload: Vec<u8>,
        wait: Duration,
    ) -> Result<Vec<u8>, Unanswered> {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let (answer, answered) = oneshot::channel();
        lock(&self.pending).insert(token, answer);
        // Taken out however this ends, a caller that stops waiting included.
        let _waiting = Forget {
            pending: &self.pending,
            token,
        };
        let sent = self.send(Publish {
            subject,
            reply: Some(format!("{}{token}", self.inbox)),
            payload,
        });
        match sent {
            Ok(()) => match tokio::time::timeout(wait, answered).await {
                Ok(Ok(Some(payload))) => Ok(payload),
                Ok(Ok(None)) => Err(Unanswered::NoResponders),
                Ok(Err(_)) | Err(_) => Err(Unanswered::Timeout),
            },
            Err(dropped) => Err(Unanswered::Dropped(dropped)),
        }
    }
}

/// Removes a request from the pending ones when dropped.
struct Forget<'a> {
    pending: &'a Pending,
    token: u64,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        lock(self.pending).remove(&self.token);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// What `INFO` says that matters here.
#[derive(Deserialize)]
struct Info {
    #[serde(default)]
    tls_required: bool,
    #[serde(default)]
    headers: bool,
    #[serde(default = "default_max_payload")]
    max_payload: usize,
}

fn default_max_payload() -> usize {
    1024 * 1024
}

type ReadIo = Box<dyn AsyncRead + Send + Unpin>;
type WriteIo = Box<dyn AsyncWrite + Send + Unpin>;

/// A connection past `CONNECT`.
struct Link {
    reader: BufReader<ReadIo>,
    writer: BufWriter<WriteIo>,
    max_payload: usize,
}

async fn handshake(
    server: &Server,
    name: &str,
    tls: Option<&TlsConnector>,
) -> Result<Link, NatsError> {
    let addr = server.addr.clone();
    match tokio::time::timeout(CONNECT_TIMEOUT, handshake_in_time(server, name, tls)).await {
        Ok(result) => result,
        Err(_) => Err(NatsError::Timeout(addr)),
    }
}

async fn handshake_in_time(
    server: &Server,
    name: &str,
    tls: Option<&TlsConnector>,
) -> Result<Link, NatsError> {
    let addr = &server.addr;
    let io = |error| NatsError::Io(addr.clone(), error);
    let mut stream = TcpStream::connect(addr).await.map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    // `INFO` comes in the clear whatever follows; read to its end only, so that
    // nothing after it is taken from a TLS handshake.
    let line = read_first_line(&mut stream, addr).await?;
    let info = line
        .strip_prefix("INFO ")
        .and_then(|json| serde_json::from_str::<Info>(json).ok())
        .ok_or_else(|| NatsError::Protocol(addr.clone(), format!("greeting {line:?}")))?;
    let secure = server.tls || info.tls_required;
    let (read, write): (ReadIo, WriteIo) = if secure {
        let Some(connector) = tls else {
            return Err(NatsError::TlsRequired(addr.clone()));
        };
        let host = addr
            .rsplit_once(':')
            .map_or(addr.as_str(), |(host, _)| host);
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let name = rustls_pki_types::ServerName::try_from(host)
            .map_err(|_| NatsError::Address(addr.clone()))?;
        let stream = connector
            .connect(name, stream)
            .await
            .map_err(|error| NatsError::Tls(addr.clone(), error))?;
        let (read, write) = tokio::io::split(stream);
        (Box::new(read), Box::new(write))
    } else {
        let (read, write) = stream.into_split();
        (Box::new(read), Box::new(write))
    };
    let mut reader = BufReader::new(read);
    let mut writer = BufWriter::new(write);
    if !info.headers {
        return Err(NatsError::NoHeaders(addr.clone()));
    }
    let mut connect = serde_json::json!({
        "verbose": false,
        "pedantic": false,
        "tls_required": secure,
        "name": name,
        "lang": "rust",
        "version": env!("CARGO_PKG_VERSION"),
        "protocol": 1,
        "echo": false,
        "headers": true,
        "no_responders": true,
    });
    if let Some(user) = &server.user {
        connect["user"] = user.as_str().into();
    }
    if let Some(pass) = &server.pass {
        connect["pass"] = pass.as_str().into();
    }
    writer
        .write_all(format!("CONNECT {connect}\r\nPING\r\n").as_bytes())
        .await
        .map_err(io)?;
    writer.flush().await.map_err(io)?;
    loop {
        let line = read_line(&mut reader, addr).await?;
        match line.as_str() {
            "PONG" => break,
            "+OK" => {}
            "PING" => {
                writer.write_all(b"PONG\r\n").await.map_err(io)?;
                writer.flush().await.map_err(io)?;
            }
            _ if line.starts_with("-ERR") => {
                return Err(NatsError::Refused(addr.clone(), line));
            }
            _ if line.starts_with("INFO ") => {}
            _ => return Err(NatsError::Protocol(addr.clone(), format!("{line:?}"))),
        }
    }
    Ok(Link {
        reader,
        writer,
        max_payload: info.max_payload,
    })
}

/// The server's first line, read a byte at a time (nothing past it).
async fn read_first_line(stream: &mut TcpStream, addr: &str) -> Result<String, NatsError> {
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") {
        if line.len() > MAX_LINE {
            return Err(NatsError::Protocol(
                addr.to_owned(),
                "a line too long".to_owned(),
            ));
        }
        let byte = stream
            .read_u8()
            .await
            .map_err(|error| NatsError::Io(addr.to_owned(), error))?;
        line.push(byte);
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line)
        .map_err(|_| NatsError::Protocol(addr.to_owned(), "not UTF-8".to_owned()))
}

async fn read_line(reader: &mut BufReader<ReadIo>, addr: &str) -> Result<String, NatsError> {
    let mut line = Vec::new();
    let read = (&mut *reader)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|error| NatsError::Io(addr.to_owned(), error))?;
    if read == 0 || !line.ends_with(b"\r\n") {
        return Err(NatsError::Protocol(
            addr.to_owned(),
            "the connection ended or a line was too long".to_owned(),
        ));
    }
    line.truncate(line.len() - 2);
    String::from_utf8(line)
        .map_err(|_| NatsError::Protocol(addr.to_owned(), "not UTF-8".to_owned()))
}

/// The connection's task: writes what is sent, reads and hands out what comes,
/// and connects again when the connection is lost.
struct Task {
    servers: Vec<Server>,
    name: String,
    tls: Option<TlsConnector>,
    ctl: mpsc::UnboundedReceiver<Ctl>,
    publishes: mpsc::UnboundedReceiver<Publish>,
    waiting: Arc<AtomicUsize>,
    connected: Arc<AtomicBool>,
    handler: Handler,
    /// Every subscription (the `SUB` line's subject and queue group, if
    /// any), to send again after a reconnection.
    subs: HashMap<u64, String>,
    inbox: String,
    pending: Pending,
    max_payload: Arc<std::sync::atomic::AtomicUsize>,
}

/// `PING`s sent and not answered yet, in order: when, and who waits.
type Flushes = VecDeque<(Instant, Option<oneshot::Sender<()>>)>;

/// Why a connection's loop ended.
enum Ended {
    /// The `Nats` handle is gone.
    Dropped,
    Lost(String),
}

impl Task {
    async fn run(mut self, first: Link) {
        let mut link = Some(first);
        let mut retry = RETRY_MIN;
        let mut next = 0;
        let mut reconnected = false;
        loop {
            let current = match link.take() {
                Some(current) => current,
                None => {
                    let server = self.servers[next % self.servers.len()].clone();
                    next += 1;
                    match handshake(&server, &self.name, self.tls.as_ref()).await {
                        Ok(current) => {
                            tracing::info!(nats = %server.addr, "connected to NATS again");
                            retry = RETRY_MIN;
                            reconnected = true;
                            current
                        }
                        Err(error) => {
                            tracing::warn!(%error, "reconnecting to NATS");
                            if !self.wait_disconnected(retry).await {
                                return;
                            }
                            retry = (retry * 2).min(RETRY_MAX);
                            continue;
                        }
                    }
                }
            };
            self.connected.store(true, Ordering::Relaxed);
            let ended = self.serve(current, std::mem::take(&mut reconnected)).await;
            self.connected.store(false, Ordering::Relaxed);
            match ended {
                Ended::Dropped => return,
                Ended::Lost(why) => tracing::warn!(%why, "lost the connection to NATS"),
            }
        }
    }

    /// Waits `pause` between connection attempts, keeping track of
    /// subscriptions meanwhile (publishes are dropped); false when the handle
    /// is gone.
    async fn wait_disconnected(&mut self, pause: Duration) -> bool {
        let deadline = tokio::time::sleep(pause);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return true,
                ctl = self.ctl.recv() => match ctl {
                    Some(Ctl::Sub { sid, subject }) => { self.subs.insert(sid, subject); }
                    Some(Ctl::Unsub { sid }) => { self.subs.remove(&sid); }
                    // Nothing to wait for: resolved (dropped) at once.
                    Some(Ctl::Flush(_)) => {}
                    None => return false,
                },
                publish = self.publishes.recv() => match publish {
                    Some(publish) => self.taken(&publish),
                    None => return false,
                },
            }
        }
    }

    /// Runs one connection; `reconnected`: it replaces a lost one.
    async fn serve(&mut self, link: Link, reconnected: bool) -> Ended {
        let Link {
            mut reader,
            mut writer,
            max_payload,
        } = link;
        self.max_payload.store(max_payload, Ordering::Relaxed);
        let mut pings = tokio::time::interval(PING_EVERY);
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        pings.tick().await;
        let mut out = Vec::with_capacity(4096);
        for (sid, subject) in &self.subs {
            out.extend_from_slice(format!("SUB {subject} {sid}\r\n").as_bytes());
        }
        let mut flushes: Flushes = VecDeque::new();
        // Told once the server has the subscriptions again (its `PONG`).
        let mut tell_reconnected = reconnected;
        if reconnected {
            out.extend_from_slice(b"PING\r\n");
            // Its place in the line of `PONG`s: nobody waits on it.
            flushes.push_back((Instant::now(), None));
        }
        let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
        loop {
            if !out.is_empty() {
                let write = async {
                    writer.write_all(&out).await?;
                    writer.flush().await
                };
                match tokio::time::timeout(WRITE_WAIT, write).await {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => return Ended::Lost(error.to_string()),
                    Err(_) => return Ended::Lost("a write did not finish".to_owned()),
                }
                out.clear();
            }
            tokio::select! {
                biased;
                // What others wait for first: a batch of publishes must not
                // keep the frames coming in waiting.
                read = reader.read_buf(&mut buf) => {
                    match read {
                        Ok(0) => return Ended::Lost("closed by the server".to_owned()),
                        Ok(_) => {}
                        Err(error) => return Ended::Lost(error.to_string()),
                    }
                    let pongs = match self.take_ops(&mut buf, max_payload, &mut out, &mut flushes) {
                        Ok(pongs) => pongs,
                        Err(why) => return Ended::Lost(why),
                    };
                    if tell_reconnected && pongs > 0 {
                        tell_reconnected = false;
                        (self.handler)(Event::Reconnected);
                    }
                }
                _ = pings.tick() => {
                    // Each `PING` waits in line for its `PONG`, a flush's too.
                    if flushes.front().is_some_and(|(sent, _)| {
                        sent.elapsed() > PING_EVERY * PINGS_OUT_MAX
                    }) {
                        return Ended::Lost("no answer to PING".to_owned());
                    }
                    out.extend_from_slice(b"PING\r\n");
                    flushes.push_back((Instant::now(), None));
                }
                ctl = self.ctl.recv() => {
                    let Some(ctl) = ctl else { return Ended::Dropped };
                    self.apply(ctl, &mut out, &mut flushes);
                    while let Ok(ctl) = self.ctl.try_recv() {
                        self.apply(ctl, &mut out, &mut flushes);
                    }
                }
                publish = self.publishes.recv() => {
                    let Some(publish) = publish else { return Ended::Dropped };
                    self.taken(&publish);
                    write_publish(&mut out, &publish);
                    // A batch in one write, not too large a buffer.
                    while out.len() < 256 * 1024 && let Ok(publish) = self.publishes.try_recv() {
                        self.taken(&publish);
                        write_publish(&mut out, &publish);
                    }
                }
            }
        }
    }

    /// `publish` has left the queue: its bytes no longer count against the limit.
    fn taken(&self, publish: &Publish) {
        self.waiting
            .fetch_sub(publish.payload.len(), Ordering::Relaxed);
    }

    fn apply(&mut self, ctl: Ctl, out: &mut Vec<u8>, flushes: &mut Flushes) {
        match ctl {
            Ctl::Sub { sid, subject } => {
                out.extend_from_slice(format!("SUB {subject} {sid}\r\n").as_bytes());
                self.subs.insert(sid, subject);
            }
            Ctl::Unsub { sid } => {
                if self.subs.remove(&sid).is_some() {
                    out.extend_from_slice(format!("UNSUB {sid}\r\n").as_bytes());
                }
            }
            Ctl::Flush(done) => {
                out.extend_from_slice(b"PING\r\n");
                flushes.push_back((Instant::now(), Some(done)));
            }
        }
    }

    /// Handles every complete operation at the front of `buf`; returns how
    /// many `PONG`s came.
    fn take_ops(
        &self,
        buf: &mut Vec<u8>,
        max_payload: usize,
        out: &mut Vec<u8>,
        flushes: &mut Flushes,
    ) -> Result<usize, String> {
        let mut start = 0;
        let mut pongs = 0;
        loop {
            let rest = &buf[start..];
            let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
                if rest.len() > MAX_LINE {
                    return Err("a line too long".to_owned());
                }
                break;
            };
            let line = std::str::from_utf8(&rest[..end]).map_err(|_| "a line not UTF-8")?;
            let mut words = line.split_ascii_whitespace();
            let op = words.next().unwrap_or("");
            let args: Vec<&str> = words.collect();
            let body = end + 2;
            match op {
                "MSG" | "HMSG" => {
                    let headers = op == "HMSG";
                    let (subject, reply, header_len, total) = match (headers, args.as_slice()) {
                        (false, [s, _, n]) => (*s, None, "0", *n),
                        (false, [s, _, r, n]) => (*s, Some(*r), "0", *n),
                        (true, [s, _, h, n]) => (*s, None, *h, *n),
                        (true, [s, _, r, h, n]) => (*s, Some(*r), *h, *n),
                        _ => return Err(format!("{line:?}")),
                    };
                    let (Ok(header_len), Ok(total)) =
                        (header_len.parse::<usize>(), total.parse::<usize>())
                    else {
                        return Err(format!("{line:?}"));
                    };
                    if total > max_payload.saturating_add(64 * 1024) || header_len > total {
                        return Err(format!("a message of {total} bytes"));
                    }
                    if rest.len() < body + total + 2 {
                        break;
                    }
                    let headers_text = &rest[body..body + header_len];
                    let payload = &rest[body + header_len..body + total];
                    self.deliver(subject, reply, headers_text, payload);
                    start += body + total + 2;
                }
                "PING" => {
                    out.extend_from_slice(b"PONG\r\n");
                    start += body;
                }
                "PONG" => {
                    pongs += 1;
                    if let Some((_, Some(done))) = flushes.pop_front() {
                        let _ = done.send(());
                    }
                    start += body;
                }
                "+OK" | "INFO" => start += body,
                "-ERR" => {
                    // Permissions violations leave the connection open; the rest close it.
                    tracing::warn!(error = line, "NATS reported an error");
                    start += body;
                }
                _ => return Err(format!("{line:?}")),
            }
        }
        buf.drain(..start);
        Ok(pongs)
    }

    fn deliver(&self, subject: &str, reply: Option<&str>, headers: &[u8], payload: &[u8]) {
        if let Some(token) = subject.strip_prefix(self.inbox.as_str()) {
            // An answer to one of this connection's requests; the status 503
            // ("NATS/1.0 503") says nobody subscribes.
            let no_responders = headers.starts_with(b"NATS/1.0 503");
            if let Ok(token) = token.parse::<u64>()
                && let Some(answer) = lock(&self.pending).remove(&token)
            {
                let _ = answer.send((!no_responders).then(|| payload.to_vec()));
            }
            return;
        }
        (self.handler)(Event::Message(Delivery {
            subject,
            reply,
            payload,
        }));
    }
}

fn write_publish(out: &mut Vec<u8>, publish: &Publish) {
    use std::io::Write;
    let _ = match &publish.reply {
        Some(reply) => write!(
            out,
            "PUB {} {} {}\r\n",
            publish.subject,
            reply,
            publish.payload.len()
        ),
        None => write!(out, "PUB {} {}\r\n", publish.subject, publish.payload.len()),
    };
    out.extend_from_slice(&publish.payload);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_with_and_without_credentials() {
        let servers =
            parse_servers("nats://a:b@10.0.0.5:4223, nats://host, 127.0.0.1:7").expect("valid");
        assert_eq!(servers[0].addr, "10.0.0.5:4223");
        assert_eq!(servers[0].user.as_deref(), Some("a"));
        assert_eq!(servers[0].pass.as_deref(), Some("b"));
        assert_eq!(servers[1].addr, "host:4222");
        assert_eq!(servers[2].addr, "127.0.0.1:7");
        let tls = parse_servers("tls://host:4443").expect("valid");
        assert!(tls[0].tls && tls[0].addr == "host:4443");
        assert!(!servers[0].tls);
        assert!(wants_tls("nats://a:4222, tls://b:4222") && !wants_tls("nats://a:4222"));
        assert!(parse_servers("ws://host:4222").is_err());
        assert!(parse_servers("nats://").is_err());
    }

    #[test]
    fn a_publish_is_one_protocol_op() {
        let mut out = Vec::new();
        write_publish(
            &mut out,
            &Publish {
                subject: "kith.all".to_owned(),
                reply: Some("_INBOX.x.1".to_owned()),
                payload: b"{}".to_vec(),
            },
        );
        assert_eq!(out, b"PUB kith.all _INBOX.x.1 2\r\n{}\r\n");
    }
}
