//! The transports a client stream runs over, behind one interface: XML over TCP
//! (plain until STARTTLS, or direct TLS) and XMPP over WebSocket (RFC 7395).
//!
//! A [`Link`] is used whole while the stream is negotiated, then split into a reader
//! and a writer so the session can read client stanzas and write queued ones at once.
//! Writers buffer; the session flushes when it has nothing more to write, so a burst
//! of stanzas leaves in few TLS records.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use kith_proto::stream::{Limits, parse_fragment};
use kith_proto::{Element, StreamEvent, StreamParser, StreamParserError, ns};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};

/// Why a link stopped delivering events.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("connection closed")]
    Eof,
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Xml(#[from] StreamParserError),
}

/// Attributes of the stream header the server sends.
pub struct Header<'a> {
    pub id: &'a str,
    pub from: &'a str,
    pub to: Option<&'a str>,
}

pub trait LinkRead: Send {
    fn next_event(&mut self) -> impl Future<Output = Result<StreamEvent, LinkError>> + Send;
    /// After our side closed the stream with an error: reads and drops what the peer
    /// still sends until it closes, for at most [`LINGER`] and [`LINGER_BYTES`].
    /// Closing a socket with unread input resets the connection, which can destroy
    /// the stream error still on its way (a "lingering close", as HTTP servers do).
    fn linger(&mut self) -> impl Future<Output = ()> + Send;
    /// The namespace the peer's stream header declared for its content, where
    /// the transport has one (XML over TCP; RFC 7395's `<open/>` has none: each
    /// WebSocket message declares its own).
    fn content_namespace(&self) -> Option<&str> {
        None
    }
    /// Whether the reader holds buffers kept for the next bytes (its XML parser's
    /// and its event queue's).
    fn holds_buffers(&self) -> bool {
        false
    }
    /// Gives those buffers back if the stream is between stanzas. The session calls
    /// it once its client has been quiet for a while ([`KEEP_BUFFERS`]): a chatty
    /// client keeps them instead of allocating them again for every read.
    fn release_buffers(&mut self) {}
}

/// How long a quiet streaming client keeps its buffers (see
/// [`LinkRead::release_buffers`]).
pub const KEEP_BUFFERS: Duration = Duration::from_secs(1);

/// How long a closed stream's input is still drained (see [`LinkRead::linger`]).
pub const LINGER: Duration = Duration::from_secs(2);
/// How much of it at most.
pub const LINGER_BYTES: usize = 1 << 20;

pub trait LinkWrite: Send {
    /// Queues the stream header (or the RFC 7395 `<open/>`).
    fn open(&mut self, header: &Header<'_>);
    /// Queues one top-level element.
    fn element(&mut self, element: &Element);
    /// A top-level element as [`LinkWrite::element`] would write it.
    fn serialize(element: &Element) -> String;
    /// Queues one top-level element already serialised (by [`LinkWrite::serialize`],
    /// or declaring its own namespace, which is right on every link).
    fn raw(&mut self, xml: &str);
    /// Queues the stream close (or `<close/>`).
    fn close(&mut self);
    /// Writes everything queued.
    fn flush(&mut self) -> impl Future<Output = io::Result<()>> + Send;
    /// Closes the underlying transport after a final flush.
    fn shutdown(&mut self) -> impl Future<Output = ()> + Send;
}

/// A link used whole during negotiation.
pub trait Link: LinkRead + LinkWrite + Sized {
    type Reader: LinkRead + 'static;
    type Writer: LinkWrite + 'static;
    /// Starts a new stream after a restart (RFC 6120 §4.3.3): a fresh parser.
    fn restart(&mut self);
    fn split(self) -> (Self::Reader, Self::Writer);
}

// ---------------------------------------------------------------- TCP and TLS

/// Bytes read from the transport at a time: a TLS record's plaintext. The buffer
/// lives on the stack only while a read is polled, so an idle connection holds
/// none (ARCHITECTURE.md, "Idle sessions").
const READ_CHUNK: usize = 16 * 1024;

/// Gives the write buffer back: most sessions are idle most of the time, and an
/// empty `String` costs nothing while they are.
fn release(out: &mut String) {
    *out = String::new();
}

/// Room for the stanzas written between two flushes, taken when the buffer
/// starts over (after [`release`]): one allocation from glibc's per-thread
/// cache (up to 1,032 bytes), instead of a reallocation each time the stanzas
/// appended double it (a serialised element grows it from 8 bytes).
const OUT_FIRST: usize = 1024;

fn reserve_first(out: &mut String) {
    if out.capacity() == 0 {
        out.reserve(OUT_FIRST);
    }
}

/// XML stream over a byte transport.
pub struct TcpLink<S> {
    reader: TcpReader<S>,
    out: String,
}

pub struct TcpReader<S> {
    io: S,
    parser: StreamParser,
    limits: Limits,
    /// Events parsed but not yet returned (a read can complete several).
    pending: VecDeque<StreamEvent>,
    /// When the socket runs dry between stanzas the buffers go, unless the client
    /// is streaming (see [`Streaming`]).
    streaming: Streaming,
}

/// Whether a client sends steadily enough to keep its buffers between reads.
/// Releasing them when the socket runs dry and allocating them again costs a few
/// allocations per read, which a client that sends many stanzas a second, one per
/// read, would pay for each; an idle session must hold none (ARCHITECTURE.md, "Idle sessions"). More than
/// [`STREAMING_RELEASES`] releases within [`KEEP_BUFFERS`] make a client
/// streaming: its buffers then stay until the session finds it quiet for
/// [`KEEP_BUFFERS`] ([`LinkRead::release_buffers`]). Login takes fewer round trips,
/// so a client that logs in and idles never keeps one.
#[derive(Default)]
struct Streaming {
    keep: bool,
    releases: u32,
    since: Option<std::time::Instant>,
}

const STREAMING_RELEASES: u32 = 8;

impl Streaming {
    /// The socket ran dry between stanzas: whether to release the buffers now.
    fn release_now(&mut self) -> bool {
        if self.keep {
            return false;
        }
        let now = std::time::Instant::now();
        match self.since {
            Some(since) if now.duration_since(since) < KEEP_BUFFERS => self.releases += 1,
            _ => {
                self.since = Some(now);
                self.releases = 1;
            }
        }
        self.keep = self.releases > STREAMING_RELEASES;
        !self.keep
    }
}

pub struct TcpWriter<S> {
    io: S,
    out: String,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> TcpLink<S> {
    pub fn new(io: S, limits: Limits) -> Self {
        TcpLink {
            reader: TcpReader {
                io,
                parser: StreamParser::new(limits),
                limits,
                pending: VecDeque::new(),
                streaming: Streaming::default(),
            },
            out: String::new(),
        }
    }

    /// The transport, for the TLS upgrade. Bytes the client sent after `<starttls/>`
    /// and before the handshake would be a protocol violation, so nothing is lost.
    pub fn into_inner(self) -> S {
        self.reader.io
    }
}

impl<S: AsyncRead + Unpin + Send> LinkRead for TcpReader<S> {
    async fn next_event(&mut self) -> Result<StreamEvent, LinkError> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            // Cancel-safe: bytes are read and parsed within one poll, so the session
            // may select on this future and drop it without losing any.
            poll_fn(|cx| self.poll_events(cx)).await?;
        }
    }

    async fn linger(&mut self) {
        let _ = tokio::time::timeout(LINGER, self.drain()).await;
    }

    fn holds_buffers(&self) -> bool {
        self.streaming.keep && self.parser.releasable()
    }

    fn release_buffers(&mut self) {
        self.streaming = Streaming::default();
        self.release();
    }
}

impl<S: AsyncRead + Unpin> TcpReader<S> {
    /// Reads what the transport has and parses it into `pending`; the events may
    /// be none (a partial stanza).
    fn poll_events(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), LinkError>> {
        let mut buf = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut read = ReadBuf::uninit(&mut buf);
        let Poll::Ready(result) = Pin::new(&mut self.io).poll_read(cx, &mut read) else {
            if self.parser.releasable() && self.streaming.release_now() {
                self.release();
            }
            return Poll::Pending;
        };
        match result {
            Err(error) => Poll::Ready(Err(error.into())),
            Ok(()) if read.filled().is_empty() => Poll::Ready(Err(LinkError::Eof)),
            Ok(()) => {
                // `pending` is empty here; both conversions keep its allocation.
                let mut events = Vec::from(std::mem::take(&mut self.pending));
                let fed = self.parser.feed(read.filled(), &mut events);
                self.pending = VecDeque::from(events);
                fed?;
                Poll::Ready(Ok(()))
            }
        }
    }

    /// Drops the parser's buffers (between stanzas) and the event queue's storage.
    fn release(&mut self) {
        self.parser.release();
        if self.pending.is_empty() {
            self.pending = VecDeque::new();
        }
    }

    async fn drain(&mut self) {
        let mut total = 0;
        while total < LINGER_BYTES {
            let read = poll_fn(|cx| {
                let mut buf = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
                let mut read = ReadBuf::uninit(&mut buf);
                Pin::new(&mut self.io)
                    .poll_read(cx, &mut read)
                    .map_ok(|()| read.filled().len())
            })
            .await;
            match read {
                Ok(0) | Err(_) => return,
                Ok(n) => total += n,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> LinkRead for TcpLink<S> {
    async fn next_event(&mut self) -> Result<StreamEvent, LinkError> {
        self.reader.next_event().await
    }

    async fn linger(&mut self) {
        self.reader.linger().await
    }

    fn content_namespace(&self) -> Option<&str> {
        self.reader.parser.content_namespace()
    }
}

fn tcp_open(out: &mut String, header: &Header<'_>) {
    use kith_proto::xml::escape_into;
    out.push_str("<?xml version='1.0'?><stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0' xml:lang='en' id='");
    escape_into(out, header.id, true);
    out.push_str("' from='");
    escape_into(out, header.from, true);
    if let Some(to) = header.to {
        out.push_str("' to='");
        escape_into(out, to, true);
    }
    out.push_str("'>");
}

macro_rules! tcp_writer_methods {
    () => {
        fn open(&mut self, header: &Header<'_>) {
            tcp_open(&mut self.out, header);
        }
        fn element(&mut self, element: &Element) {
            reserve_first(&mut self.out);
            element.write_stream_xml(&mut self.out, ns::CLIENT);
        }
        fn serialize(element: &Element) -> String {
            element.to_stream_xml(ns::CLIENT)
        }
        fn raw(&mut self, xml: &str) {
            reserve_first(&mut self.out);
            self.out.push_str(xml);
        }
        fn close(&mut self) {
            self.out.push_str("</stream:stream>");
        }
    };
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> LinkWrite for TcpLink<S> {
    tcp_writer_methods!();

    async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.reader.io.write_all(self.out.as_bytes()).await?;
            release(&mut self.out);
        }
        self.reader.io.flush().await
    }

    async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.reader.io.shutdown().await;
    }
}

impl<S: AsyncWrite + Unpin + Send> LinkWrite for TcpWriter<S> {
    tcp_writer_methods!();

    async fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.io.write_all(self.out.as_bytes()).await?;
            release(&mut self.out);
        }
        self.io.flush().await
    }

    async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Link for TcpLink<S> {
    type Reader = TcpReader<ReadHalf<S>>;
    type Writer = TcpWriter<WriteHalf<S>>;

    fn restart(&mut self) {
        self.reader.parser = StreamParser::new(self.reader.limits);
        self.reader.pending.clear();
    }

    fn split(self) -> (Self::Reader, Self::Writer) {
        let (read, write) = tokio::io::split(self.reader.io);
        (
            TcpReader {
                io: read,
                parser: self.reader.parser,
                limits: self.reader.limits,
                pending: self.reader.pending,
                streaming: self.reader.streaming,
            },
            TcpWriter {
                io: write,
                out: self.out,
            },
        )
    }
}

// ---------------------------------------------------------------- WebSocket

/// XMPP over WebSocket (RFC 7395): one complete element per text message, `<open/>`
/// and `<close/>` in the framing namespace instead of the stream header.
pub struct WsLink {
    socket: WebSocket,
    limits: Limits,
    out: Vec<String>,
}

pub struct WsReader {
    stream: SplitStream<WebSocket>,
    limits: Limits,
}

pub struct WsWriter {
    sink: SplitSink<WebSocket, WsMessage>,
    out: Vec<String>,
}

impl WsLink {
    pub fn new(socket: WebSocket, limits: Limits) -> Self {
        WsLink {
            socket,
            limits,
            out: Vec::new(),
        }
    }
}

fn ws_event(
    message: Option<Result<WsMessage, axum::Error>>,
    limits: Limits,
) -> Result<Option<StreamEvent>, LinkError> {
    let message = match message {
        None => return Err(LinkError::Eof),
        Some(Err(error)) => return Err(LinkError::Io(io::Error::other(error))),
        Some(Ok(message)) => message,
    };
    let data = match &message {
        WsMessage::Text(text) => text.as_bytes(),
        // RFC 7395 §3.2: binary messages are not XMPP; treat like malformed data.
        WsMessage::Binary(_) => {
            return Err(LinkError::Xml(StreamParserError {
                condition: kith_proto::StreamErrorCondition::NotWellFormed,
                detail: "binary WebSocket message".to_owned(),
            }));
        }
        WsMessage::Close(_) => return Err(LinkError::Eof),
        WsMessage::Ping(_) | WsMessage::Pong(_) => return Ok(None),
    };
    if data.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let element = parse_fragment(data, limits)?;
    Ok(Some(if element.is("open", ns::FRAMING) {
        StreamEvent::Open(element)
    } else if element.is("close", ns::FRAMING) {
        StreamEvent::Close
    } else {
        StreamEvent::Stanza(element)
    }))
}

impl LinkRead for WsReader {
    async fn next_event(&mut self) -> Result<StreamEvent, LinkError> {
        loop {
            if let Some(event) = ws_event(self.stream.next().await, self.limits)? {
                return Ok(event);
            }
        }
    }

    /// WebSocket messages are whole and the close is a handshake of its own.
    async fn linger(&mut self) {}
}

impl LinkRead for WsLink {
    async fn next_event(&mut self) -> Result<StreamEvent, LinkError> {
        loop {
            if let Some(event) = ws_event(self.socket.next().await, self.limits)? {
                return Ok(event);
            }
        }
    }

    async fn linger(&mut self) {}
}

fn ws_open(header: &Header<'_>) -> String {
    Element::new(ns::FRAMING, "open")
        .attr("from", header.from)
        .attr("id", header.id)
        .attr_opt("to", header.to)
        .attr("version", "1.0")
        .attr("xml:lang", "en")
        .to_xml("")
}

macro_rules! ws_writer_methods {
    () => {
        fn open(&mut self, header: &Header<'_>) {
            self.out.push(ws_open(header));
        }
        fn element(&mut self, element: &Element) {
            self.out.push(Self::serialize(element));
        }
        fn serialize(element: &Element) -> String {
            // RFC 7395 §3.3.3: every top-level element carries its namespace.
            element.to_xml("")
        }
        fn raw(&mut self, xml: &str) {
            self.out.push(xml.to_owned());
        }
        fn close(&mut self) {
            self.out.push(Element::new(ns::FRAMING, "close").to_xml(""));
        }
    };
}

impl LinkWrite for WsLink {
    ws_writer_methods!();

    async fn flush(&mut self) -> io::Result<()> {
        for text in self.out.drain(..) {
            self.socket
                .send(WsMessage::Text(text.into()))
                .await
                .map_err(io::Error::other)?;
        }
        Ok(())
    }

    async fn shutdown(&mut self) {
        let _ = LinkWrite::flush(self).await;
        let _ = self.socket.send(WsMessage::Close(None)).await;
    }
}

impl LinkWrite for WsWriter {
    ws_writer_methods!();

    async fn flush(&mut self) -> io::Result<()> {
        for text in self.out.drain(..) {
            self.sink
                .feed(WsMessage::Text(text.into()))
                .await
                .map_err(io::Error::other)?;
        }
        self.sink.flush().await.map_err(io::Error::other)
    }

    async fn shutdown(&mut self) {
        let _ = LinkWrite::flush(self).await;
        let _ = self.sink.send(WsMessage::Close(None)).await;
        let _ = self.sink.close().await;
    }
}

impl Link for WsLink {
    type Reader = WsReader;
    type Writer = WsWriter;

    fn restart(&mut self) {}

    fn split(self) -> (Self::Reader, Self::Writer) {
        let (sink, stream) = self.socket.split();
        (
            WsReader {
                stream,
                limits: self.limits,
            },
            WsWriter {
                sink,
                out: self.out,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncWriteExt, DuplexStream, duplex};

    const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:client' \
        xmlns:stream='http://etherx.jabber.org/streams' to='localhost' version='1.0'>";

    async fn reader() -> (TcpReader<DuplexStream>, DuplexStream) {
        let (ours, mut client) = duplex(64 * 1024);
        let TcpLink { mut reader, .. } = TcpLink::new(ours, Limits::default());
        client.write_all(HEADER.as_bytes()).await.unwrap();
        assert!(matches!(
            reader.next_event().await.unwrap(),
            StreamEvent::Open(_)
        ));
        (reader, client)
    }

    /// One stanza, read alone; then the socket has nothing more for now.
    async fn one_stanza(reader: &mut TcpReader<DuplexStream>, client: &mut DuplexStream, n: u32) {
        let stanza = format!("<message to='a@localhost' id='m{n}'><body>hi</body></message>");
        client.write_all(stanza.as_bytes()).await.unwrap();
        match reader.next_event().await.unwrap() {
            StreamEvent::Stanza(element) => {
                assert_eq!(element.get_attr("id"), Some(&*format!("m{n}")))
            }
            other => panic!("expected a stanza, got {other:?}"),
        }
        // A poll that finds the socket dry.
        let dry = poll_fn(|cx| Poll::Ready(reader.poll_events(cx).is_pending())).await;
        assert!(dry);
    }

    #[tokio::test]
    async fn a_few_stanzas_then_quiet_keep_no_parser() {
        let (mut reader, mut client) = reader().await;
        for n in 0..STREAMING_RELEASES {
            one_stanza(&mut reader, &mut client, n).await;
            assert!(
                reader.parser.is_released(),
                "stanza {n}: a login-like exchange"
            );
            assert!(!reader.holds_buffers());
        }
    }

    #[tokio::test]
    async fn a_streaming_client_keeps_its_parser_until_quiet() {
        let (mut reader, mut client) = reader().await;
        for n in 0..STREAMING_RELEASES * 3 {
            one_stanza(&mut reader, &mut client, n).await;
        }
        assert!(!reader.parser.is_released(), "kept while streaming");
        assert!(
            reader.holds_buffers(),
            "the session is told to release it later"
        );
        reader.release_buffers();
        assert!(reader.parser.is_released());
        assert!(!reader.holds_buffers());
        // After the quiet spell it starts over: released at once again.
        one_stanza(&mut reader, &mut client, 100).await;
        assert!(reader.parser.is_released());
        // And a stanza split across reads is still parsed whole.
        client.write_all(b"<message id='split'><bo").await.unwrap();
        let dry = poll_fn(|cx| Poll::Ready(reader.poll_events(cx).is_pending())).await;
        assert!(!dry, "the partial stanza was read");
        reader.release_buffers();
        client.write_all(b"dy>x</body></message>").await.unwrap();
        match reader.next_event().await.unwrap() {
            StreamEvent::Stanza(element) => assert_eq!(element.get_attr("id"), Some("split")),
            other => panic!("expected a stanza, got {other:?}"),
        }
    }
}
