//! The HTTP(S) listener: XMPP over WebSocket (RFC 7395) at `/xmpp-websocket` and
//! connection discovery (XEP-0156) at `/.well-known/host-meta[.json]`, the JSON
//! API under `/api/v1/` (`api/`), the XEP-0363 upload routes (`upload::http`),
//! Prometheus metrics at `/metrics` (`metrics.rs`), and the web client's files
//! (`web.rs`) at `/`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::Server;
use crate::link::WsLink;
use crate::tls_stream::TlsStream;

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) server: Arc<Server>,
    pub(crate) secure: bool,
}

pub(crate) async fn serve(server: Arc<Server>, listener: TcpListener, secure: bool) {
    let app = Router::new()
        .route("/xmpp-websocket", get(websocket))
        .route("/.well-known/host-meta", get(host_meta_xml))
        .route("/.well-known/host-meta.json", get(host_meta_json))
        .route("/api/v1/push/vapid", get(push_vapid))
        .route("/metrics", get(crate::metrics::scrape))
        .route("/", get(crate::web::index))
        .fallback(crate::web::asset)
        .with_state(AppState {
            server: server.clone(),
            secure,
        })
        .merge(crate::api::router(server.clone()))
        .merge(crate::upload::http::routes(server.clone()));
    let service = app.into_make_service_with_connect_info::<PeerAddr>();
    let result = if secure {
        let tls = TlsListener::new(listener, server.clone());
        axum::serve(tls, service).await
    } else {
        axum::serve(NoDelay(listener), service).await
    };
    if let Err(error) = result {
        tracing::error!(%error, "HTTP listener stopped");
    }
}

/// Bytes a WebSocket connection reads at a time (see `websocket`): a chat
/// message's frame fits; a larger one grows the buffer as it needs. The
/// buffer is held for the connection's life, so it is most of what an idle
/// WebSocket session costs beyond a TCP one: 13.1 KiB per idle `wss://`
/// session at 5,000 with 4 KiB, 10.3 with 1 KiB (BENCHMARKS.md, session 25).
const WS_READ_BUFFER: usize = 1024;

/// RFC 7395 §3.1: the handshake must select the `xmpp` subprotocol.
async fn websocket(
    State(state): State<AppState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let upgrade = upgrade.protocols(["xmpp"]);
    if upgrade.selected_protocol().is_none() {
        return (
            StatusCode::BAD_REQUEST,
            "the WebSocket subprotocol 'xmpp' is required (RFC 7395)",
        )
            .into_response();
    }
    let Some(_slot) = state.server.connections.try_open(peer.ip()) else {
        return (StatusCode::TOO_MANY_REQUESTS, "too many connections").into_response();
    };
    drop(_slot);
    let limits = crate::c2s::limits(&state.server);
    let server = state.server.clone();
    upgrade
        .max_message_size(limits.max_stanza_size)
        .max_frame_size(limits.max_stanza_size)
        // tungstenite's default read buffer (128 KiB) is allocated per connection
        // and zero-filled before every read: 141 KiB of RSS per idle WebSocket
        // session and ≈ 94,000 instructions of `memset` per stanza read. A
        // stanza is much smaller; a larger frame grows the buffer as it needs.
        .read_buffer_size(WS_READ_BUFFER)
        .on_upgrade(move |socket| async move {
            let Some(slot) = server.connections.try_open(peer.ip()) else {
                return;
            };
            let link = WsLink::new(socket, limits);
            crate::c2s::negotiate(&server, link, peer.ip(), state.secure, true, slot).await;
        })
}

/// The WebSocket endpoints to advertise, for the host the client asked for.
fn endpoints(state: &AppState, headers: &HeaderMap) -> Vec<String> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(|h| {
            h.rsplit_once(':').map_or(h, |(name, port)| {
                if port.chars().all(|c| c.is_ascii_digit()) {
                    name
                } else {
                    h
                }
            })
        })
        .unwrap_or(&state.server.domain)
        .to_owned();
    let mut urls = Vec::new();
    if let Some(port) = state.server.https_port() {
        urls.push(format!("wss://{host}:{port}/xmpp-websocket"));
    }
    if !state.secure
        && let Some(port) = state.server.http_port()
    {
        urls.push(format!("ws://{host}:{port}/xmpp-websocket"));
    }
    urls
}

/// XEP-0156 §3.2: the XRD document.
async fn host_meta_xml(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let mut body = String::from(
        "<?xml version='1.0' encoding='utf-8'?>\n<XRD xmlns='http://docs.oasis-open.org/ns/xri/xrd-1.0'>\n",
    );
    for url in endpoints(&state, &headers) {
        body.push_str("  <Link rel='urn:xmpp:alt-connections:websocket' href='");
        kith_proto::xml::escape_into(&mut body, &url, true);
        body.push_str("'/>\n");
    }
    body.push_str("</XRD>\n");
    (
        [
            (header::CONTENT_TYPE, "application/xrd+xml; charset=utf-8"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        body,
    )
        .into_response()
}

/// XEP-0156 §3.3: the JRD (JSON) form.
async fn host_meta_json(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let links: Vec<serde_json::Value> = endpoints(&state, &headers)
        .into_iter()
        .map(|href| serde_json::json!({"rel": "urn:xmpp:alt-connections:websocket", "href": href}))
        .collect();
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        serde_json::json!({ "links": links }).to_string(),
    )
        .into_response()
}

/// The VAPID public key a browser subscribes with (Web Push, RFC 8292), as
/// `{"publicKey": "<base64url>", "enabled": bool}`.
async fn push_vapid(State(state): State<AppState>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"),
        ],
        crate::features::push::vapid_document(&state.server),
    )
        .into_response()
}

/// The client's address, on plain and TLS listeners alike.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PeerAddr(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, NoDelay>> for PeerAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, NoDelay>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// The plain listener, with Nagle's algorithm off on every connection as on
/// c2s: a WebSocket stanza is a small write that must not wait for the ACK of
/// the one before (up to 40 ms a stanza with delayed ACKs).
struct NoDelay(TcpListener);

impl axum::serve::Listener for NoDelay {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, peer) = axum::serve::Listener::accept(&mut self.0).await;
        let _ = tcp.set_nodelay(true);
        (tcp, peer)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>>
    for PeerAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        PeerAddr(*stream.remote_addr())
    }
}

/// Accepts TLS connections for axum. Handshakes run in their own tasks so a slow
/// or silent client cannot hold up the accept loop.
struct TlsListener {
    incoming: mpsc::Receiver<(TlsStream, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    fn new(listener: TcpListener, server: Arc<Server>) -> Self {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let (tx, incoming) = mpsc::channel(256);
        tokio::spawn(async move {
            // kith's own TLS stream, as on c2s: it holds no buffer while idle, and
            // a WebSocket session lives as long as the browser tab.
            let config = server.https_tls.clone();
            let timeout = Duration::from_secs(server.config.limits.auth_timeout_secs);
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "HTTPS accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // As `NoDelay`: no Nagle delay for WebSocket stanzas.
                let _ = tcp.set_nodelay(true);
                let config = config.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let handshake = crate::tls_stream::accept(config, tcp);
                    if let Ok(Ok(tls)) = tokio::time::timeout(timeout, handshake).await {
                        let _ = tx.send((tls, peer)).await;
                    }
                });
            }
        });
        TlsListener { incoming, local }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.incoming.recv().await {
            Some(accepted) => accepted,
            // The accept task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
