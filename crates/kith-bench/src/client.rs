//! One XMPP client connection: TCP from a chosen source address, STARTTLS, SASL
//! (SCRAM-SHA-1, SCRAM-SHA-256 or PLAIN), resource binding, presence, roster, and
//! XEP-0077 in-band registration for provisioning. Or, with a WebSocket target,
//! XMPP over WebSocket (RFC 7395): TLS on the socket (`wss://`) instead of
//! STARTTLS, one stanza per text message, `<open/>`/`<close/>` instead of the
//! stream header and its end.
//!
//! Works against any RFC 6120 server. Memory per connection is kept small: one
//! 4 KiB read buffer, the XML parser and the TLS state.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use kith_proto::stream::{Limits, parse_fragment};
use kith_proto::{Element, StreamEvent, StreamParser};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::scram::{self, Hash, ScramClient};

pub const NS_CLIENT: &str = "jabber:client";
pub const NS_TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const NS_SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const NS_BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const NS_SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
pub const NS_SM: &str = "urn:xmpp:sm:3";
pub const NS_PING: &str = "urn:xmpp:ping";
pub const NS_FRAMING: &str = "urn:ietf:params:xml:ns:xmpp-framing";
pub const NS_SASL2: &str = "urn:xmpp:sasl:2";
pub const NS_BIND2: &str = "urn:xmpp:bind:0";
pub const NS_FAST: &str = "urn:xmpp:fast:0";
const HT: &str = "HT-SHA-256-NONE";
const READ_BUF: usize = 4096;

pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Mech {
    /// SCRAM-SHA-1 if offered, else SCRAM-SHA-256, else PLAIN.
    Auto,
    ScramSha1,
    ScramSha256,
    Plain,
}

/// How a client signs in (named in reports as on the command line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Auth {
    /// RFC 6120: SASL, a stream restart, then a resource bind.
    Classic,
    /// XEP-0388 SASL2 with XEP-0386 Bind 2: authentication and binding in one
    /// exchange, no restart.
    Sasl2,
    /// XEP-0484 FAST: SASL2 with a token from an earlier login, one round trip
    /// (the login scenario gets every user's token before it measures; the
    /// other scenarios sign in as with `sasl2`).
    Fast,
}

/// What every connection needs to know.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    /// Other nodes of the same service: user N connects to the (N mod nodes)-th
    /// of `addr` and these.
    pub also: Vec<SocketAddr>,
    pub domain: String,
    pub tls: Option<Arc<ClientConfig>>,
    pub mech: Mech,
    pub auth: Auth,
    pub password: String,
    pub sources: Vec<IpAddr>,
    pub timeout: Duration,
    /// Connect over WebSocket to this `ws://` or `wss://` URL (at `addr`) instead
    /// of XMPP's TCP binding; `wss://` uses `tls`.
    pub websocket: Option<String>,
}

impl Target {
    /// The node user `index` connects to.
    pub fn addr_for(&self, index: usize) -> SocketAddr {
        match index % (1 + self.also.len()) {
            0 => self.addr,
            n => self.also[n - 1],
        }
    }

    pub fn source_for(&self, index: usize) -> Option<IpAddr> {
        if self.sources.is_empty() {
            None
        } else {
            Some(self.sources[index % self.sources.len()])
        }
    }
}

/// A connection being negotiated: one stream, one parser.
pub struct Conn {
    link: Link,
    events: std::collections::VecDeque<StreamEvent>,
    scratch: Vec<StreamEvent>,
}

type Ws = WebSocketStream<Box<dyn Io>>;

/// XMPP's TCP binding (a byte stream, parsed incrementally) or its WebSocket
/// binding (whole elements, one per message).
enum Link {
    Stream {
        io: Box<dyn Io>,
        parser: StreamParser,
        buf: Box<[u8]>,
    },
    Ws(Box<Ws>),
}

pub fn limits() -> Limits {
    Limits {
        max_stanza_size: 1 << 20,
        max_depth: 64,
    }
}

impl Conn {
    fn new(io: Box<dyn Io>) -> Self {
        Conn::on(Link::Stream {
            io,
            parser: StreamParser::new(limits()),
            buf: vec![0u8; READ_BUF].into_boxed_slice(),
        })
    }

    fn on(link: Link) -> Self {
        Conn {
            link,
            events: Default::default(),
            scratch: Vec::new(),
        }
    }

    /// Sends what a TCP client would write; on WebSocket, framed ([`ws_frames`]).
    pub async fn send(&mut self, xml: &str) -> Result<()> {
        match &mut self.link {
            Link::Stream { io, .. } => {
                io.write_all(xml.as_bytes()).await?;
                io.flush().await?;
            }
            Link::Ws(ws) => send_frames(&mut **ws, xml).await?,
        }
        Ok(())
    }

    /// The next stream event; a closed stream or a stream error is an error.
    pub async fn next(&mut self) -> Result<StreamEvent> {
        loop {
            if let Some(event) = self.events.pop_front() {
                if let StreamEvent::Stanza(el) = &event
                    && el.name == "error"
                    && el.ns == kith_proto::ns::STREAM
                {
                    let cond = el
                        .elements()
                        .next()
                        .map(|c| c.name.clone())
                        .unwrap_or_default();
                    bail!("stream error: {cond}");
                }
                return Ok(event);
            }
            match &mut self.link {
                Link::Stream { io, parser, buf } => {
                    let n = io.read(buf).await?;
                    if n == 0 {
                        bail!("connection closed by server");
                    }
                    feed(parser, &buf[..n], &mut self.scratch, &mut self.events)?;
                }
                Link::Ws(ws) => {
                    if let Some(event) = ws_event(ws.next().await)? {
                        self.events.push_back(event);
                    }
                }
            }
        }
    }

    pub async fn next_stanza(&mut self) -> Result<Element> {
        match self.next().await? {
            StreamEvent::Stanza(el) => Ok(el),
            StreamEvent::Open(_) => bail!("unexpected stream header"),
            StreamEvent::Close => bail!("server closed the stream"),
        }
    }

    /// Opens (or restarts) the stream and returns `<stream:features/>`.
    async fn open(&mut self, domain: &str) -> Result<Element> {
        self.events.clear();
        let domain = kith_proto::xml::escape(domain);
        match &mut self.link {
            Link::Stream { io, parser, .. } => {
                *parser = StreamParser::new(limits());
                let header = format!(
                    "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
                     xmlns:stream='http://etherx.jabber.org/streams' to='{domain}' version='1.0'>"
                );
                io.write_all(header.as_bytes()).await?;
                io.flush().await?;
            }
            // RFC 7395 §3.4 (§3.5: a restart is a new `<open/>`).
            Link::Ws(ws) => {
                let open = format!("<open xmlns='{NS_FRAMING}' to='{domain}' version='1.0'/>");
                ws.send(WsMessage::text(open)).await?;
            }
        }
        match self.next().await? {
            StreamEvent::Open(_) => {}
            other => bail!("expected a stream header, got {other:?}"),
        }
        let features = self.next_stanza().await?;
        if features.name != "features" {
            bail!("expected stream features, got <{}>", features.name);
        }
        Ok(features)
    }

    pub fn into_split(self) -> (Reader, Writer) {
        let (link, writer) = match self.link {
            Link::Stream { io, parser, buf } => {
                let (rd, wr) = tokio::io::split(io);
                (ReadLink::Stream { rd, parser, buf }, Writer::Stream(wr))
            }
            Link::Ws(ws) => {
                let (wr, rd) = ws.split();
                (ReadLink::Ws(rd), Writer::Ws(wr))
            }
        };
        (
            Reader {
                link,
                events: self.events,
                scratch: self.scratch,
            },
            writer,
        )
    }
}

/// The read side of a negotiated stream.
pub struct Reader {
    link: ReadLink,
    events: std::collections::VecDeque<StreamEvent>,
    scratch: Vec<StreamEvent>,
}

enum ReadLink {
    Stream {
        rd: ReadHalf<Box<dyn Io>>,
        parser: StreamParser,
        buf: Box<[u8]>,
    },
    Ws(SplitStream<Box<Ws>>),
}

/// The write side of a negotiated stream ([`write`]).
pub enum Writer {
    Stream(WriteHalf<Box<dyn Io>>),
    Ws(SplitSink<Box<Ws>, WsMessage>),
}

impl Reader {
    /// The next top-level element, or `None` when the server closed the stream.
    pub async fn next(&mut self) -> Result<Option<Element>> {
        loop {
            match self.events.pop_front() {
                Some(StreamEvent::Stanza(el)) => return Ok(Some(el)),
                Some(StreamEvent::Close) => return Ok(None),
                Some(StreamEvent::Open(_)) => continue,
                None => {}
            }
            match &mut self.link {
                ReadLink::Stream { rd, parser, buf } => {
                    let n = rd.read(buf).await?;
                    if n == 0 {
                        return Ok(None);
                    }
                    feed(parser, &buf[..n], &mut self.scratch, &mut self.events)?;
                }
                ReadLink::Ws(rd) => match rd.next().await {
                    None => return Ok(None),
                    message => {
                        if let Some(event) = ws_event(message)? {
                            self.events.push_back(event);
                        }
                    }
                },
            }
        }
    }
}

/// Parses bytes read from a TCP stream and queues the events they complete.
fn feed(
    parser: &mut StreamParser,
    bytes: &[u8],
    scratch: &mut Vec<StreamEvent>,
    events: &mut std::collections::VecDeque<StreamEvent>,
) -> Result<()> {
    parser
        .feed(bytes, scratch)
        .map_err(|e| anyhow!("XML from server: {e}"))?;
    events.extend(scratch.drain(..));
    Ok(())
}

/// One WebSocket message as a stream event (`None`: nothing XMPP, e.g. a ping).
/// The end of the connection is an error, as a TCP stream's end is in
/// [`Conn::next`]: whoever reads past the server's close stops there.
fn ws_event(
    message: Option<Result<WsMessage, tokio_tungstenite::tungstenite::Error>>,
) -> Result<Option<StreamEvent>> {
    let text = match message {
        None => bail!("connection closed by server"),
        Some(Ok(WsMessage::Close(_))) => return Ok(Some(StreamEvent::Close)),
        Some(Err(error)) => bail!("WebSocket: {error}"),
        Some(Ok(WsMessage::Text(text))) => text,
        Some(Ok(WsMessage::Binary(_))) => bail!("binary WebSocket message from server"),
        Some(Ok(_)) => return Ok(None),
    };
    let element =
        parse_fragment(text.as_bytes(), limits()).map_err(|e| anyhow!("XML from server: {e}"))?;
    Ok(Some(if element.is("open", NS_FRAMING) {
        StreamEvent::Open(element)
    } else if element.is("close", NS_FRAMING) {
        StreamEvent::Close
    } else {
        StreamEvent::Stanza(element)
    }))
}

/// Sends `xml` as the WebSocket messages [`ws_frames`] makes of it, flushing once.
async fn send_frames<S>(sink: &mut S, xml: &str) -> Result<()>
where
    S: futures::Sink<WsMessage, Error = tokio_tungstenite::tungstenite::Error> + Unpin,
{
    for frame in ws_frames(xml) {
        sink.feed(WsMessage::text(frame)).await?;
    }
    sink.flush().await?;
    Ok(())
}

/// What the scenarios write, written for RFC 7395: the XML a TCP client sends
/// (possibly several stanzas at once, stanzas without a namespace of their own,
/// the stream's end) as one message per top-level element (§3.3.3), each
/// stanza declaring `jabber:client` (the framing has no stream to inherit it
/// from), `</stream:stream>` as `<close/>` (§3.6). Only for the XML kith-bench
/// makes itself: quoted attribute values, no comments or CDATA.
pub fn ws_frames(xml: &str) -> Vec<String> {
    let bytes = xml.as_bytes();
    let mut frames = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'<' {
            i += 1;
            continue;
        }
        let tag_start = i;
        // The tag ends at the first `>` outside a quoted attribute value.
        let mut quote = None;
        i += 1;
        while i < bytes.len() {
            match (quote, bytes[i]) {
                (None, b'>') => break,
                (None, q @ (b'\'' | b'"')) => quote = Some(q),
                (Some(q), c) if c == q => quote = None,
                _ => {}
            }
            i += 1;
        }
        i = (i + 1).min(bytes.len());
        let tag = &xml[tag_start..i];
        if tag.starts_with("<?") {
            continue;
        }
        if tag.starts_with("</") {
            if depth == 0 {
                // The stream's end: the one closing tag with nothing open.
                frames.push(format!("<close xmlns='{NS_FRAMING}'/>"));
                continue;
            }
            depth -= 1;
        } else {
            if depth == 0 {
                start = tag_start;
            }
            if !tag.ends_with("/>") {
                depth += 1;
            }
        }
        if depth == 0 {
            frames.push(with_client_namespace(&xml[start..i]));
        }
    }
    frames
}

/// `element` with `xmlns='jabber:client'` on its start tag unless it names a
/// namespace itself.
fn with_client_namespace(element: &str) -> String {
    let name_end = element[1..]
        .find(|c: char| c.is_ascii_whitespace() || c == '/' || c == '>')
        .map_or(element.len(), |n| n + 1);
    let start_tag_end = element.find('>').unwrap_or(element.len());
    if element[..start_tag_end].contains("xmlns=") {
        return element.to_owned();
    }
    format!(
        "{} xmlns='{NS_CLIENT}'{}",
        &element[..name_end],
        &element[name_end..]
    )
}

/// A logged-in session, not yet split.
pub struct Session {
    pub conn: Conn,
    /// The full JID the server bound.
    pub jid: String,
    pub sm_offered: bool,
    pub tls: Option<String>,
}

async fn connect_tcp(target: &Target, index: usize) -> Result<TcpStream> {
    let addr = target.addr_for(index);
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(source) = target.source_for(index) {
        socket
            .bind(SocketAddr::new(source, 0))
            .with_context(|| format!("binding source address {source}"))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// TCP + stream + STARTTLS + stream restart (or, over WebSocket, TLS for
/// `wss://` + the WebSocket handshake + `<open/>`); returns the connection, the
/// features and the TLS parameters.
async fn secure(target: &Target, index: usize) -> Result<(Conn, Element, Option<String>)> {
    let tcp = connect_tcp(target, index).await?;
    if let Some(url) = &target.websocket {
        return websocket(target, url, tcp).await;
    }
    let mut conn = Conn::new(Box::new(tcp));
    let features = conn.open(&target.domain).await?;
    let Some(tls) = &target.tls else {
        return Ok((conn, features, None));
    };
    if !features.has_child("starttls", NS_TLS) {
        bail!("server does not offer STARTTLS");
    }
    conn.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await?;
    let answer = conn.next_stanza().await?;
    if answer.name != "proceed" {
        bail!("STARTTLS refused: <{}>", answer.name);
    }
    // Nothing else may arrive before the handshake, so the parser's state is moot.
    let Link::Stream { io, buf, .. } = conn.link else {
        bail!("STARTTLS on a WebSocket");
    };
    let (tls_stream, version) = tls_connect(target, tls, io).await?;
    let mut conn = Conn::new(tls_stream);
    if let Link::Stream { buf: fresh, .. } = &mut conn.link {
        *fresh = buf;
    }
    let features = conn.open(&target.domain).await?;
    Ok((conn, features, Some(version)))
}

/// The address a `ws://` or `wss://` URL names (an IP address or `localhost`).
pub fn websocket_addr(url: &str) -> Result<SocketAddr> {
    let uri: tokio_tungstenite::tungstenite::http::Uri = url.parse().context("WebSocket URL")?;
    let port = match (uri.scheme_str(), uri.port_u16()) {
        (Some("ws" | "wss"), Some(port)) => port,
        (Some("ws"), None) => 80,
        (Some("wss"), None) => 443,
        _ => bail!("a WebSocket URL starts with ws:// or wss://: {url}"),
    };
    let ip = match uri.host() {
        Some("localhost") => IpAddr::from([127, 0, 0, 1]),
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .with_context(|| format!("the WebSocket URL's host is not an IP address: {host}"))?,
        None => bail!("the WebSocket URL has no host: {url}"),
    };
    Ok(SocketAddr::new(ip, port))
}

/// The TLS handshake as the client, returning the stream and its parameters.
async fn tls_connect<S: Io + 'static>(
    target: &Target,
    tls: &Arc<ClientConfig>,
    io: S,
) -> Result<(Box<dyn Io>, String)> {
    let name = ServerName::try_from(target.domain.clone()).context("TLS server name")?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, io)
        .await
        .context("TLS handshake")?;
    let version = tls_parameters(stream.get_ref().1);
    Ok((Box::new(stream), version))
}

/// RFC 7395 §3.1: the WebSocket handshake asks for the `xmpp` subprotocol; TLS
/// first when the target has it (a `wss://` URL: `main` gives a `ws://` URL none).
async fn websocket(
    target: &Target,
    url: &str,
    tcp: TcpStream,
) -> Result<(Conn, Element, Option<String>)> {
    let (io, version): (Box<dyn Io>, _) = match &target.tls {
        Some(tls) => {
            let (stream, version) = tls_connect(target, tls, tcp).await?;
            (stream, Some(version))
        }
        None => (Box::new(tcp), None),
    };
    let mut request = url.into_client_request().context("WebSocket URL")?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        tokio_tungstenite::tungstenite::http::HeaderValue::from_static("xmpp"),
    );
    // tungstenite zero-fills its read buffer before every read and keeps it per
    // connection: its 128 KiB default made the load generator the bottleneck
    // (and cost 128 KiB a connection); a stanza is much smaller.
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(READ_BUF);
    let (ws, response) = tokio_tungstenite::client_async_with_config(request, io, Some(config))
        .await
        .context("WebSocket handshake")?;
    if response
        .headers()
        .get("Sec-WebSocket-Protocol")
        .is_none_or(|p| p != "xmpp")
    {
        bail!("the server did not accept the xmpp WebSocket subprotocol");
    }
    let mut conn = Conn::on(Link::Ws(Box::new(ws)));
    let features = conn.open(&target.domain).await?;
    Ok((conn, features, version))
}

/// Protocol version, cipher suite and key exchange, as the reports print them.
fn tls_parameters(state: &rustls::ClientConnection) -> String {
    format!(
        "{:?} {:?} {:?}",
        state
            .protocol_version()
            .unwrap_or(rustls::ProtocolVersion::Unknown(0)),
        state
            .negotiated_cipher_suite()
            .map(|s| s.suite())
            .unwrap_or(rustls::CipherSuite::Unknown(0)),
        state
            .negotiated_key_exchange_group()
            .map(|g| g.name())
            .unwrap_or(rustls::NamedGroup::Unknown(0))
    )
}

fn offered_mechs(features: &Element) -> Vec<String> {
    features
        .get_child("mechanisms", NS_SASL)
        .map(|m| {
            m.elements()
                .filter(|e| e.name == "mechanism")
                .map(Element::text_content)
                .collect()
        })
        .unwrap_or_default()
}

/// The SCRAM hash `target.mech` picks among the `offered` mechanisms; `None`
/// for PLAIN.
fn pick(target: &Target, offered: &[String]) -> Result<Option<Hash>> {
    let has = |m: &str| offered.iter().any(|o| o == m);
    let scram = match target.mech {
        Mech::ScramSha1 => Some(Hash::Sha1),
        Mech::ScramSha256 => Some(Hash::Sha256),
        Mech::Plain => None,
        Mech::Auto if has("SCRAM-SHA-1") => Some(Hash::Sha1),
        Mech::Auto if has("SCRAM-SHA-256") => Some(Hash::Sha256),
        Mech::Auto => None,
    };
    let wanted = scram.map(Hash::mechanism).unwrap_or("PLAIN");
    if !has(wanted) {
        bail!("server does not offer {wanted} (offers {offered:?})");
    }
    Ok(scram)
}

async fn authenticate(
    conn: &mut Conn,
    target: &Target,
    user: &str,
    offered: &[String],
) -> Result<()> {
    let scram = pick(target, offered)?;
    let enc = kith_proto::sasl::encode_payload;
    let dec = kith_proto::sasl::decode_payload;
    match scram {
        None => {
            conn.send(&format!(
                "<auth xmlns='{NS_SASL}' mechanism='PLAIN'>{}</auth>",
                enc(&scram::plain(user, &target.password))
            ))
            .await?;
            let answer = conn.next_stanza().await?;
            if answer.name != "success" {
                bail!("authentication failed: {}", failure_text(&answer));
            }
        }
        Some(hash) => {
            let mut client = ScramClient::new(hash, user, &target.password);
            conn.send(&format!(
                "<auth xmlns='{NS_SASL}' mechanism='{}'>{}</auth>",
                hash.mechanism(),
                enc(&client.client_first())
            ))
            .await?;
            let challenge = conn.next_stanza().await?;
            if challenge.name != "challenge" {
                bail!("authentication failed: {}", failure_text(&challenge));
            }
            let server_first = dec(&challenge.text_content()).map_err(|e| anyhow!("{e:?}"))?;
            let fin = client.client_final(&server_first)?;
            conn.send(&format!(
                "<response xmlns='{NS_SASL}'>{}</response>",
                enc(&fin)
            ))
            .await?;
            let answer = conn.next_stanza().await?;
            if answer.name != "success" {
                bail!("authentication failed: {}", failure_text(&answer));
            }
            let server_final = dec(&answer.text_content()).map_err(|e| anyhow!("{e:?}"))?;
            client.verify(&server_final)?;
        }
    }
    Ok(())
}

fn failure_text(el: &Element) -> String {
    let cond = el
        .elements()
        .next()
        .map(|c| c.name.clone())
        .unwrap_or_default();
    format!("<{}><{cond}/>", el.name)
}

/// Options for what to do after binding.
#[derive(Clone, Copy)]
pub struct LoginSteps {
    pub presence: bool,
    pub roster: bool,
}

/// Logs `user` in: STARTTLS, SASL, bind (+ legacy session) — or SASL2 with
/// Bind 2 (`target.auth`), with a FAST `token` when one is given — then
/// optionally roster get and initial presence. Times out as a whole after
/// `target.timeout`.
pub async fn login(
    target: &Target,
    user: &str,
    index: usize,
    steps: LoginSteps,
) -> Result<Session> {
    login_with(target, user, index, steps, None).await
}

/// [`login`] with a FAST token from [`fast_token`].
pub async fn login_with(
    target: &Target,
    user: &str,
    index: usize,
    steps: LoginSteps,
    token: Option<&str>,
) -> Result<Session> {
    in_time(target, login_inner(target, user, index, steps, token)).await
}

/// A login within `target.timeout`, as a whole.
async fn in_time<T>(target: &Target, login: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(target.timeout, login)
        .await
        .map_err(|_| anyhow!("login timed out after {:?}", target.timeout))?
}

/// Signs `user` in with SASL2 asking for a FAST token, and leaves: the token.
pub async fn fast_token(target: &Target, user: &str, index: usize) -> Result<String> {
    let login = async {
        let (mut conn, features, _) = secure(target, index).await?;
        let (_, token) = sasl2(&mut conn, target, user, index, &features, None, true).await?;
        let _ = conn.send("</stream:stream>").await;
        token.ok_or_else(|| anyhow!("no FAST token in the server's <success/>"))
    };
    in_time(target, login).await
}

async fn login_inner(
    target: &Target,
    user: &str,
    index: usize,
    steps: LoginSteps,
    token: Option<&str>,
) -> Result<Session> {
    let (mut conn, features, tls) = secure(target, index).await?;
    let (jid, sm_offered) = match target.auth {
        Auth::Classic => classic_bind(&mut conn, target, user, index, &features).await?,
        Auth::Sasl2 | Auth::Fast => {
            let (jid, _) = sasl2(&mut conn, target, user, index, &features, token, false).await?;
            (jid, true)
        }
    };
    if steps.roster {
        conn.send("<iq type='get' id='roster'><query xmlns='jabber:iq:roster'/></iq>")
            .await?;
        wait_iq(&mut conn, "roster").await?;
    }
    if steps.presence {
        conn.send("<presence/>").await?;
    }
    Ok(Session {
        conn,
        jid,
        sm_offered,
        tls,
    })
}

/// RFC 6120 after TLS: SASL, a stream restart, a bind; the JID, and whether
/// stream management is offered.
async fn classic_bind(
    conn: &mut Conn,
    target: &Target,
    user: &str,
    index: usize,
    features: &Element,
) -> Result<(String, bool)> {
    authenticate(conn, target, user, &offered_mechs(features)).await?;
    let features = conn.open(&target.domain).await?;
    if !features.has_child("bind", NS_BIND) {
        bail!("server does not offer resource binding");
    }
    let sm_offered = features.has_child("sm", NS_SM);
    conn.send(&format!(
        "<iq type='set' id='bind'><bind xmlns='{NS_BIND}'><resource>bench{index}</resource></bind></iq>"
    ))
    .await?;
    let answer = wait_iq(conn, "bind").await?;
    let jid = answer
        .get_child("bind", NS_BIND)
        .and_then(|b| b.child_text("jid", NS_BIND))
        .ok_or_else(|| anyhow!("bind result without a JID"))?;
    // RFC 3921 session establishment, only where the server still requires it.
    if let Some(session) = features.get_child("session", NS_SESSION)
        && !session.has_child("optional", NS_SESSION)
    {
        conn.send(&format!(
            "<iq type='set' id='sess'><session xmlns='{NS_SESSION}'/></iq>"
        ))
        .await?;
        wait_iq(conn, "sess").await?;
    }
    Ok((jid, sm_offered))
}

/// XEP-0388 SASL2 with a Bind 2 request, with the password (SCRAM or PLAIN
/// per `target.mech`) or a FAST `token` (HT-SHA-256-NONE), optionally asking
/// for a token; the bound JID and the token the server issued, if any. The
/// user-agent id is the same for the same `index`, so a user keeps its
/// resource and its tokens.
async fn sasl2(
    conn: &mut Conn,
    target: &Target,
    user: &str,
    index: usize,
    features: &Element,
    token: Option<&str>,
    request_token: bool,
) -> Result<(String, Option<String>)> {
    use hmac::{Hmac, Mac};
    let ht = |token: &str, label: &[u8]| -> Result<Vec<u8>> {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(token.as_bytes())?;
        mac.update(label);
        Ok(mac.finalize().into_bytes().to_vec())
    };
    let offered: Vec<String> = features
        .get_child("authentication", NS_SASL2)
        .ok_or_else(|| anyhow!("server does not offer SASL2 (XEP-0388)"))?
        .elements()
        .filter(|e| e.name == "mechanism")
        .map(Element::text_content)
        .collect();
    let enc = kith_proto::sasl::encode_payload;
    let dec = |text: &str| kith_proto::sasl::decode_payload(text).map_err(|e| anyhow!("{e:?}"));
    let mut inline = format!(
        "<user-agent id='00000000-0000-4000-8000-{index:012x}'/>\
         <bind xmlns='{NS_BIND2}'><tag>bench</tag></bind>"
    );
    if request_token {
        inline.push_str(&format!(
            "<request-token xmlns='{NS_FAST}' mechanism='{HT}'/>"
        ));
    }
    let authenticate = |mechanism: &str, initial: &[u8], inline: &str| {
        format!(
            "<authenticate xmlns='{NS_SASL2}' mechanism='{mechanism}'>\
             <initial-response>{}</initial-response>{inline}</authenticate>",
            enc(initial)
        )
    };
    let answer = match (token, pick(target, &offered)?) {
        (Some(token), _) => {
            let mut initial = user.as_bytes().to_vec();
            initial.push(0);
            initial.extend(ht(token, b"Initiator")?);
            inline.push_str(&format!("<fast xmlns='{NS_FAST}'/>"));
            conn.send(&authenticate(HT, &initial, &inline)).await?;
            let answer = conn.next_stanza().await?;
            let data = answer.child_text("additional-data", NS_SASL2);
            if answer.name == "success"
                && data.map(|d| dec(&d)).transpose()? != Some(ht(token, b"Responder")?)
            {
                bail!("the server's FAST answer does not prove it knows the token");
            }
            answer
        }
        (None, None) => {
            let initial = scram::plain(user, &target.password);
            conn.send(&authenticate("PLAIN", &initial, &inline)).await?;
            conn.next_stanza().await?
        }
        (None, Some(hash)) => {
            let mut client = ScramClient::new(hash, user, &target.password);
            conn.send(&authenticate(
                hash.mechanism(),
                &client.client_first(),
                &inline,
            ))
            .await?;
            let challenge = conn.next_stanza().await?;
            if challenge.name != "challenge" {
                bail!("authentication failed: {}", failure_text(&challenge));
            }
            let fin = client.client_final(&dec(&challenge.text_content())?)?;
            conn.send(&format!(
                "<response xmlns='{NS_SASL2}'>{}</response>",
                enc(&fin)
            ))
            .await?;
            let answer = conn.next_stanza().await?;
            if answer.name == "success" {
                let data = answer
                    .child_text("additional-data", NS_SASL2)
                    .ok_or_else(|| anyhow!("SCRAM success without the server's proof"))?;
                client.verify(&dec(&data)?)?;
            }
            answer
        }
    };
    if answer.name != "success" {
        bail!("authentication failed: {}", failure_text(&answer));
    }
    let jid = answer
        .child_text("authorization-identifier", NS_SASL2)
        .ok_or_else(|| anyhow!("SASL2 success without an authorization identifier"))?;
    if answer.get_child("bound", NS_BIND2).is_none() {
        bail!("the server did not bind a resource inline (XEP-0386)");
    }
    let issued = answer
        .get_child("token", NS_FAST)
        .and_then(|t| t.get_attr("token"))
        .map(str::to_owned);
    // XEP-0388 §2.6.1: the features follow, without a stream restart.
    let features = conn.next_stanza().await?;
    if features.name != "features" {
        bail!(
            "expected stream features after SASL2 success, got <{}>",
            features.name
        );
    }
    Ok((jid, issued))
}

/// Waits for the IQ result with `id`, answering pings meanwhile and skipping the rest.
async fn wait_iq(conn: &mut Conn, id: &str) -> Result<Element> {
    loop {
        let el = conn.next_stanza().await?;
        if el.name == "iq" && el.get_attr("id") == Some(id) {
            return match el.get_attr("type") {
                Some("result") => Ok(el),
                _ => Err(anyhow!("iq {id} failed: {}", error_condition(&el))),
            };
        }
        if let Some(reply) = auto_reply(&el) {
            conn.send(&reply).await?;
        }
    }
}

pub fn error_condition(el: &Element) -> String {
    el.get_child("error", NS_CLIENT)
        .and_then(|e| e.elements().next().map(|c| c.name.to_string()))
        .unwrap_or_else(|| "unknown".into())
}

/// The answer a well-behaved client owes an incoming IQ get/set (pings get a
/// result, anything else `service-unavailable`).
pub fn auto_reply(el: &Element) -> Option<String> {
    if el.name != "iq" || !matches!(el.get_attr("type"), Some("get" | "set")) {
        return None;
    }
    let id = kith_proto::xml::escape(el.get_attr("id").unwrap_or(""));
    let to = el
        .get_attr("from")
        .map(|f| format!(" to='{}'", kith_proto::xml::escape(f)))
        .unwrap_or_default();
    if el.has_child("ping", NS_PING) {
        Some(format!("<iq type='result' id='{id}'{to}/>"))
    } else {
        Some(format!(
            "<iq type='error' id='{id}'{to}><error type='cancel'><service-unavailable \
             xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        ))
    }
}

/// Outcome of one in-band registration.
pub enum Registered {
    Created,
    Existed,
}

/// XEP-0077 in-band registration of `user` with the target's password.
pub async fn register(target: &Target, user: &str, index: usize) -> Result<Registered> {
    tokio::time::timeout(target.timeout, async {
        let (mut conn, _features, _) = secure(target, index).await?;
        conn.send(&format!(
            "<iq type='set' id='reg' to='{}'><query xmlns='jabber:iq:register'><username>{}</username>\
             <password>{}</password></query></iq>",
            kith_proto::xml::escape(&target.domain),
            kith_proto::xml::escape(user),
            kith_proto::xml::escape(&target.password)
        ))
        .await?;
        let result = loop {
            let el = conn.next_stanza().await?;
            if el.name == "iq" && el.get_attr("id") == Some("reg") {
                break match el.get_attr("type") {
                    Some("result") => Ok(Registered::Created),
                    _ if error_condition(&el) == "conflict" => Ok(Registered::Existed),
                    _ => Err(anyhow!("registration refused: {}", error_condition(&el))),
                };
            }
        };
        let _ = conn.send("</stream:stream>").await;
        result
    })
    .await
    .map_err(|_| anyhow!("registration timed out"))?
}

/// Writes what a TCP client would write (framed on WebSocket) and flushes.
pub async fn write(wr: &mut Writer, xml: &str) -> Result<()> {
    match wr {
        Writer::Stream(wr) => {
            wr.write_all(xml.as_bytes()).await?;
            wr.flush().await?;
        }
        Writer::Ws(sink) => send_frames(sink, xml).await?,
    }
    Ok(())
}

/// What a scenario's connections report besides their own counts.
#[derive(Default)]
pub struct LinkCounters {
    /// `<message type='error'/>`s received.
    pub stanza_errors: std::sync::atomic::AtomicU64,
    /// Connections that ended while the run was not stopping.
    pub disconnects: std::sync::atomic::AtomicU64,
    /// Set when the scenario closes its connections itself.
    pub stopping: std::sync::atomic::AtomicBool,
}

/// A load generator's read side: hands each `<message/>` but an error to
/// `on_message`, counts the errors, queues what needs an answer (pings) on
/// `replies`, and at the end counts a disconnect unless the run is stopping.
pub async fn read_loop(
    mut rd: Reader,
    replies: tokio::sync::mpsc::Sender<String>,
    counters: &LinkCounters,
    mut on_message: impl FnMut(&Element),
) {
    use std::sync::atomic::Ordering;
    loop {
        match rd.next().await {
            Ok(Some(el)) if el.name == "message" => {
                if el.get_attr("type") == Some("error") {
                    counters.stanza_errors.fetch_add(1, Ordering::Relaxed);
                } else {
                    on_message(&el);
                }
            }
            Ok(Some(el)) => {
                if let Some(reply) = auto_reply(&el) {
                    let _ = replies.try_send(reply);
                }
            }
            _ => {
                if !counters.stopping.load(Ordering::Relaxed) {
                    counters.disconnects.fetch_add(1, Ordering::Relaxed);
                }
                return;
            }
        }
    }
}

/// Why [`paced`] stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Paced {
    /// The run is over (the control channel closed).
    Done,
    /// A write failed (the connection is gone).
    Failed,
}

/// A load generator's write side for stepped rates. `control` says the step
/// and its aggregate rate (`None`: between steps); while a step runs and
/// `active`, this connection writes its `1 / share` of the rate, evenly
/// spaced from a random phase, each stanza written by `make(step, buffer)`
/// into an emptied buffer kept between ticks (`false`: nothing this tick) and
/// counted with `sent(step)`. Always, the answers the reader queues on
/// `replies` (pongs, acks) go out between.
pub async fn paced(
    wr: &mut Writer,
    active: bool,
    share: usize,
    control: &mut tokio::sync::watch::Receiver<Option<(usize, u32)>>,
    replies: &mut tokio::sync::mpsc::Receiver<String>,
    mut make: impl FnMut(usize, &mut String) -> bool,
    sent: impl Fn(usize),
) -> Paced {
    let mut xml = String::new();
    loop {
        let current = *control.borrow_and_update();
        let Some((step, rate)) = current.filter(|_| active) else {
            tokio::select! {
                r = control.changed() => if r.is_err() { return Paced::Done },
                Some(reply) = replies.recv() => if write(wr, &reply).await.is_err() { return Paced::Failed },
            }
            continue;
        };
        let period = Duration::from_secs_f64(share as f64 / f64::from(rate.max(1)));
        let phase = period.mul_f64(rand::random::<f64>());
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        loop {
            // In this order, without drawing a random one per message: a step's
            // end and the answers the server waits for before the next message.
            tokio::select! {
                biased;
                r = control.changed() => {
                    if r.is_err() { return Paced::Done; }
                    break;
                }
                Some(reply) = replies.recv() => {
                    if write(wr, &reply).await.is_err() { return Paced::Failed; }
                }
                _ = tick.tick() => {
                    xml.clear();
                    if !make(step, &mut xml) {
                        continue;
                    }
                    if write(wr, &xml).await.is_err() {
                        return Paced::Failed;
                    }
                    sent(step);
                }
            }
        }
    }
}

/// A rustls client configuration trusting `ca` (PEM), or anything with `insecure`.
/// Session resumption is off so that every login costs the server a full handshake
/// on every server alike, and the one key exchange offered is X25519, which every
/// server here supports (ejabberd's and Prosody's OpenSSL 3.0 have no ML-KEM; with
/// rustls's default, kith would do the X25519+ML-KEM-768 hybrid and pay for it).
pub fn tls_config(ca: Option<&std::path::Path>, insecure: bool) -> Result<Arc<ClientConfig>> {
    use rustls_pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::CryptoProvider {
        kx_groups: vec![rustls::crypto::aws_lc_rs::kx_group::X25519],
        ..rustls::crypto::aws_lc_rs::default_provider()
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let mut config = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(insecure::AcceptAny::new()))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        let path = ca.ok_or_else(|| anyhow!("give --ca FILE or --insecure"))?;
        for cert in rustls_pki_types::CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading {}", path.display()))?
        {
            roots.add(cert.context("PEM certificate")?)?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

mod insecure {
    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
    use rustls::{DigitallySignedStruct, SignatureScheme};
    use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

    /// Accepts any certificate (anchors' self-signed ones); signatures are still
    /// checked so the handshake costs what it costs a real client.
    #[derive(Debug)]
    pub struct AcceptAny(CryptoProvider);

    impl AcceptAny {
        pub fn new() -> Self {
            AcceptAny(rustls::crypto::aws_lc_rs::default_provider())
        }
    }

    impl ServerCertVerifier for AcceptAny {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls12_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            verify_tls13_signature(
                message,
                cert,
                dss,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_frames_are_one_element_each_in_the_client_namespace() {
        let frames = ws_frames(
            "<message to='a@b' type='chat' id='m1'><body>a &gt; b</body></message>\
             <message to='c@d' id='x>y'><body>2</body><x xmlns='u'><x/></x></message>\
             <r xmlns='urn:xmpp:sm:3'/><presence/></stream:stream>",
        );
        assert_eq!(
            frames,
            [
                "<message xmlns='jabber:client' to='a@b' type='chat' id='m1'><body>a &gt; b</body></message>",
                "<message xmlns='jabber:client' to='c@d' id='x>y'><body>2</body><x xmlns='u'><x/></x></message>",
                "<r xmlns='urn:xmpp:sm:3'/>",
                "<presence xmlns='jabber:client'/>",
                "<close xmlns='urn:ietf:params:xml:ns:xmpp-framing'/>",
            ]
        );
        // Every frame is a complete element a server can parse on its own.
        for frame in &frames {
            parse_fragment(frame.as_bytes(), limits()).expect(frame);
        }
    }

    #[test]
    fn websocket_urls_name_their_address() {
        assert_eq!(
            websocket_addr("ws://127.0.0.1:5280/xmpp-websocket").ok(),
            Some(SocketAddr::from(([127, 0, 0, 1], 5280)))
        );
        assert_eq!(
            websocket_addr("wss://localhost/xmpp-websocket").ok(),
            Some(SocketAddr::from(([127, 0, 0, 1], 443)))
        );
        assert!(websocket_addr("http://127.0.0.1/").is_err());
        assert!(websocket_addr("ws://example.org/xmpp-websocket").is_err());
    }
}
