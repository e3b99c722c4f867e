//! TLS for XMPP streams (RFC 6120 §5 STARTTLS, XEP-0368 direct TLS) on rustls's
//! unbuffered API, so that an idle connection holds no TLS buffer.
//!
//! tokio-rustls drives rustls's buffered `ServerConnection`, whose receive buffer is
//! resized to 4 KiB before every socket read and never shrinks below that: 4 KiB per
//! idle session, a third of what one held. Here the connection owns no receive
//! buffer: ciphertext is read into a buffer on the stack of the poll that reads and
//! decrypted there, straight into the reader's buffer; only the tail of an
//! incomplete record is kept, in a `Vec` freed once the record is complete.
//! Outgoing records are encrypted into a `Vec` that is freed once written.
//!
//! [`TlsStream`] is an `AsyncRead + AsyncWrite` like tokio-rustls's, so the link
//! layer (`link.rs`) is the same for TCP and TLS. HTTPS uses it too (`http.rs`):
//! a WebSocket session there lives as long as the browser tab that opened it.

use std::future::poll_fn;
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use rustls::ServerConfig;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Bytes read from the socket at a time, into a buffer on the stack of the poll:
/// a whole TLS record (16 KiB of plaintext plus its header and tag) and then some.
const READ_SIZE: usize = 18 * 1024;

/// Received ciphertext kept at most while waiting for the rest of a message: a
/// handshake message of up to 64 KiB (rustls's own limit for its buffered API)
/// plus a record.
const MAX_PENDING: usize = 0xffff + READ_SIZE;

/// Plaintext encrypted per `poll_write`: what may wait in `outgoing` for the socket.
const MAX_WRITE: usize = 64 * 1024;

/// Why a TLS connection failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Tls(#[from] rustls::Error),
    #[error("TLS message larger than {MAX_PENDING} bytes")]
    TooLarge,
    #[error("the peer closed the connection during the TLS handshake")]
    Eof,
    #[error("TLS connection not writable ({0})")]
    NotWritable(&'static str),
    #[error("encoding a TLS record: {0}")]
    Encode(#[from] EncodeError),
    #[error("encrypting a TLS record: {0}")]
    Encrypt(#[from] EncryptError),
    #[error("the TLS connection failed earlier")]
    Failed,
}

impl From<TlsError> for io::Error {
    fn from(error: TlsError) -> Self {
        match error {
            TlsError::Io(error) => error,
            TlsError::Eof => io::Error::new(io::ErrorKind::UnexpectedEof, error),
            error => io::Error::new(io::ErrorKind::InvalidData, error),
        }
    }
}

/// A server-side TLS connection over TCP, after its handshake.
pub struct TlsStream {
    tcp: TcpStream,
    conn: UnbufferedServerConnection,
    /// Received ciphertext not processed yet: the start of a record (or of a
    /// handshake message spanning records). Empty, so unallocated, between records.
    incoming: Vec<u8>,
    /// Decrypted bytes the reader had no room for yet.
    plaintext: Vec<u8>,
    /// Encrypted records from `sent` on are still to be written; freed once all are.
    outgoing: Vec<u8>,
    sent: usize,
    /// The peer sent close_notify or ended its TCP stream: nothing more to read.
    read_closed: bool,
    /// Our close_notify is queued: nothing more to write.
    write_closed: bool,
    /// rustls reported an error; the connection is unusable.
    failed: bool,
}

/// Runs the TLS handshake of a server connection on `tcp`.
pub async fn accept(config: Arc<ServerConfig>, tcp: TcpStream) -> Result<TlsStream, TlsError> {
    let mut stream = TlsStream {
        tcp,
        conn: UnbufferedServerConnection::new(config)?,
        incoming: Vec::new(),
        plaintext: Vec::new(),
        outgoing: Vec::new(),
        sent: 0,
        read_closed: false,
        write_closed: false,
        failed: false,
    };
    poll_fn(|cx| stream.poll_handshake(cx)).await?;
    Ok(stream)
}

impl TlsStream {
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), TlsError>> {
        loop {
            if let Err(error) = self.process(Goal::Read) {
                return Poll::Ready(Err(self.fail(cx, error)));
            }
            ready!(self.poll_send(cx))?;
            if !self.conn.is_handshaking() {
                return Poll::Ready(Ok(()));
            }
            if self.read_closed {
                return Poll::Ready(Err(TlsError::Eof));
            }
            let mut bytes = [MaybeUninit::<u8>::uninit(); READ_SIZE];
            let mut read = ReadBuf::uninit(&mut bytes);
            ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Err(TlsError::Eof));
            }
            self.incoming.extend_from_slice(read.filled());
            if self.incoming.len() > MAX_PENDING {
                return Poll::Ready(Err(TlsError::TooLarge));
            }
        }
    }

    /// Runs rustls over the kept ciphertext until `goal` is met.
    fn process(&mut self, goal: Goal<'_>) -> Result<(), TlsError> {
        let mut sink = Sink {
            buf: None,
            overflow: &mut self.plaintext,
        };
        drive_kept(
            &mut self.conn,
            &mut self.incoming,
            &mut sink,
            &mut self.outgoing,
            &mut self.read_closed,
            goal,
        )
    }

    /// Takes ciphertext just read: decrypts what completes records into `buf` (the
    /// rest into `plaintext`) and keeps the tail of an incomplete record.
    fn receive(&mut self, bytes: &mut [u8], buf: &mut ReadBuf<'_>) -> Result<(), TlsError> {
        let mut sink = Sink {
            buf: Some(buf),
            overflow: &mut self.plaintext,
        };
        if self.incoming.is_empty() {
            // The usual case: whole records, processed where they were read.
            let processed = drive(
                &mut self.conn,
                bytes,
                &mut sink,
                &mut self.outgoing,
                &mut self.read_closed,
                Goal::Read,
            )?;
            self.incoming.extend_from_slice(&bytes[processed..]);
        } else {
            self.incoming.extend_from_slice(bytes);
            drive_kept(
                &mut self.conn,
                &mut self.incoming,
                &mut sink,
                &mut self.outgoing,
                &mut self.read_closed,
                Goal::Read,
            )?;
        }
        if self.incoming.len() > MAX_PENDING {
            return Err(TlsError::TooLarge);
        }
        Ok(())
    }

    /// Marks the connection failed and sends the alert rustls queued for the peer,
    /// if the socket takes it now.
    fn fail(&mut self, cx: &mut Context<'_>, error: TlsError) -> TlsError {
        tracing::debug!(%error, "TLS connection failed");
        self.failed = true;
        self.write_closed = true;
        // Only while rustls has records queued: `process_tls_records` returns them
        // before it looks at the (here empty) input.
        while self.conn.wants_write() {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            let Ok(ConnectionState::EncodeTlsData(mut data)) = state else {
                break;
            };
            if append(
                &mut self.outgoing,
                0,
                |out| data.encode(out),
                |e| match e {
                    EncodeError::InsufficientSize(size) => Some(size.required_size),
                    EncodeError::AlreadyEncoded => None,
                },
            )
            .is_err()
            {
                break;
            }
        }
        let _ = self.poll_send(cx);
        error
    }

    /// Writes `outgoing` to the socket; frees it once all is written.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let written =
                ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outgoing[self.sent..]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += written;
        }
        if self.sent > 0 || self.outgoing.capacity() > 0 {
            self.outgoing = Vec::new();
            self.sent = 0;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.plaintext.is_empty() {
                let n = buf.remaining().min(this.plaintext.len());
                buf.put_slice(&this.plaintext[..n]);
                this.plaintext.drain(..n);
                if this.plaintext.is_empty() {
                    this.plaintext = Vec::new();
                }
                return Poll::Ready(Ok(()));
            }
            if this.failed {
                return Poll::Ready(Err(TlsError::Failed.into()));
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            // An answer rustls owes the peer (a key update) goes out now, not at the
            // next write.
            if let Poll::Ready(Err(error)) = this.poll_send(cx) {
                return Poll::Ready(Err(error));
            }
            let mut bytes = [MaybeUninit::<u8>::uninit(); READ_SIZE];
            let mut read = ReadBuf::uninit(&mut bytes);
            ready!(Pin::new(&mut this.tcp).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.read_closed = true;
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed the connection without a TLS close_notify",
                )));
            }
            let before = buf.filled().len();
            if let Err(error) = this.receive(read.filled_mut(), buf) {
                return Poll::Ready(Err(this.fail(cx, error).into()));
            }
            if buf.filled().len() > before {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl AsyncWrite for TlsStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(Err(TlsError::Failed.into()));
        }
        // At most one batch of records waits for the socket.
        ready!(this.poll_send(cx))?;
        if this.write_closed {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let data = &data[..data.len().min(MAX_WRITE)];
        if let Err(error) = this.process(Goal::Write(data)) {
            return Poll::Ready(Err(this.fail(cx, error).into()));
        }
        // Start sending; what the socket doesn't take now goes at the next write or
        // flush.
        if let Poll::Ready(Err(error)) = this.poll_send(cx) {
            return Poll::Ready(Err(error));
        }
        Poll::Ready(Ok(data.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    /// Sends close_notify, then ends the TCP stream's sending side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.write_closed {
            this.write_closed = true;
            if let Err(error) = this.process(Goal::Close) {
                tracing::debug!(%error, "queueing the TLS close_notify");
            }
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// What [`drive`] stops at, once rustls has processed every complete record.
#[derive(Clone, Copy)]
enum Goal<'a> {
    /// Nothing more: wait for more bytes from the peer.
    Read,
    /// Encrypt these application bytes into `outgoing`.
    Write(&'a [u8]),
    /// Encrypt a close_notify alert into `outgoing`.
    Close,
}

/// Where decrypted application data goes: the reader's buffer while it has room,
/// then `overflow`.
struct Sink<'a, 'b> {
    buf: Option<&'a mut ReadBuf<'b>>,
    overflow: &'a mut Vec<u8>,
}

impl Sink<'_, '_> {
    fn put(&mut self, mut bytes: &[u8]) {
        if self.overflow.is_empty()
            && let Some(buf) = &mut self.buf
        {
            let n = buf.remaining().min(bytes.len());
            buf.put_slice(&bytes[..n]);
            bytes = &bytes[n..];
        }
        self.overflow.extend_from_slice(bytes);
    }
}

/// Runs rustls over `incoming` (received ciphertext): application data goes to
/// `sink`, handshake messages and alerts rustls sends to `outgoing`, then `goal`
/// is met. Returns how many bytes of `incoming` were processed; the caller removes
/// them before calling again with what follows.
fn drive(
    conn: &mut UnbufferedServerConnection,
    incoming: &mut [u8],
    sink: &mut Sink<'_, '_>,
    outgoing: &mut Vec<u8>,
    read_closed: &mut bool,
    goal: Goal<'_>,
) -> Result<usize, TlsError> {
    let mut processed = 0;
    loop {
        let UnbufferedStatus { mut discard, state } =
            conn.process_tls_records(&mut incoming[processed..]);
        let finished = match state? {
            ConnectionState::ReadTraffic(mut traffic) => {
                while let Some(record) = traffic.next_record() {
                    let record = record?;
                    discard += record.discard;
                    sink.put(record.payload);
                }
                false
            }
            ConnectionState::EncodeTlsData(mut data) => {
                append(
                    outgoing,
                    0,
                    |out| data.encode(out),
                    |error| match error {
                        EncodeError::InsufficientSize(size) => Some(size.required_size),
                        EncodeError::AlreadyEncoded => None,
                    },
                )?;
                false
            }
            // The records are in `outgoing`, ahead of anything encrypted later.
            ConnectionState::TransmitTlsData(data) => {
                data.done();
                false
            }
            // close_notify: the stream ends here, though we may still send.
            ConnectionState::PeerClosed => {
                *read_closed = true;
                false
            }
            ConnectionState::WriteTraffic(mut traffic) => {
                match goal {
                    Goal::Read => {}
                    Goal::Write(data) => {
                        // One record per 16 KiB, each with a header, tag and type.
                        let estimate = data.len() + (data.len() / 16384 + 1) * 64;
                        append(
                            outgoing,
                            estimate,
                            |out| traffic.encrypt(data, out),
                            encrypt_size,
                        )?;
                    }
                    Goal::Close => {
                        append(
                            outgoing,
                            64,
                            |out| traffic.queue_close_notify(out),
                            encrypt_size,
                        )?;
                    }
                }
                true
            }
            // More bytes needed to go on with the handshake.
            ConnectionState::BlockedHandshake => match goal {
                Goal::Read => true,
                Goal::Write(_) | Goal::Close => {
                    return Err(TlsError::NotWritable("handshake not complete"));
                }
            },
            ConnectionState::Closed => {
                *read_closed = true;
                match goal {
                    Goal::Read => true,
                    Goal::Write(_) | Goal::Close => {
                        return Err(TlsError::NotWritable("closed"));
                    }
                }
            }
            // Early data is off (`ServerConfig::max_early_data_size` is 0).
            _ => return Err(TlsError::NotWritable("unexpected TLS state")),
        };
        processed += discard;
        if finished {
            return Ok(processed);
        }
    }
}

/// [`drive`] over the kept ciphertext `incoming`, which then loses what was
/// processed (and its allocation, once empty).
fn drive_kept(
    conn: &mut UnbufferedServerConnection,
    incoming: &mut Vec<u8>,
    sink: &mut Sink<'_, '_>,
    outgoing: &mut Vec<u8>,
    read_closed: &mut bool,
    goal: Goal<'_>,
) -> Result<(), TlsError> {
    let processed = drive(conn, incoming, sink, outgoing, read_closed, goal)?;
    incoming.drain(..processed);
    if incoming.is_empty() {
        *incoming = Vec::new();
    }
    Ok(())
}

fn encrypt_size(error: &EncryptError) -> Option<usize> {
    match error {
        EncryptError::InsufficientSize(size) => Some(size.required_size),
        _ => None,
    }
}

/// Appends what `encode` writes to `out`, first into `estimate` bytes, then into as
/// many as it asks for.
fn append<E: Into<TlsError>>(
    out: &mut Vec<u8>,
    estimate: usize,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, E>,
    required: impl Fn(&E) -> Option<usize>,
) -> Result<(), TlsError> {
    let start = out.len();
    out.resize(start + estimate, 0);
    loop {
        match encode(&mut out[start..]) {
            Ok(written) => {
                out.truncate(start + written);
                return Ok(());
            }
            Err(error) => match required(&error) {
                Some(size) if size > out.len() - start => out.resize(start + size, 0),
                _ => {
                    out.truncate(start);
                    return Err(error.into());
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    struct Setup {
        _dir: tempfile::TempDir,
        server: Arc<ServerConfig>,
        client: tokio_rustls::TlsConnector,
        listener: TcpListener,
    }

    async fn setup() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let paths = crate::tls::CertificatePaths {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            ca: Some(dir.path().join("ca.pem")),
        };
        crate::tls::generate("localhost", &paths).unwrap();
        let certificate = crate::tls::Certificate::load(&paths).unwrap();
        let server = crate::tls::server_config(&certificate, &[]).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(paths.ca.as_ref().unwrap()).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let client = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Setup {
            _dir: dir,
            server,
            client: tokio_rustls::TlsConnector::from(Arc::new(client)),
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    /// A connected pair: our server side and a tokio-rustls client.
    async fn pair(setup: &Setup) -> (TlsStream, tokio_rustls::client::TlsStream<TcpStream>) {
        let address = setup.listener.local_addr().unwrap();
        let connector = setup.client.clone();
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(address).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            connector.connect(name, tcp).await.unwrap()
        });
        let (tcp, _) = setup.listener.accept().await.unwrap();
        let server = accept(setup.server.clone(), tcp).await.unwrap();
        (server, client.await.unwrap())
    }

    fn holds_nothing(stream: &TlsStream) -> bool {
        stream.incoming.capacity() == 0
            && stream.plaintext.capacity() == 0
            && stream.outgoing.capacity() == 0
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[tokio::test]
    async fn data_both_ways_and_nothing_held_between() {
        let setup = setup().await;
        let (mut server, mut client) = pair(&setup).await;

        client.write_all(b"<stream:stream>").await.unwrap();
        client.flush().await.unwrap();
        let mut buf = [0u8; 15];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"<stream:stream>");
        assert!(holds_nothing(&server));

        // Several records, more than one read's worth, both ways.
        let big = pattern(100_000);
        let expected = big.clone();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; expected.len()];
            client.read_exact(&mut got).await.unwrap();
            assert_eq!(got, expected);
            client.write_all(&pattern(70_000)).await.unwrap();
            client.flush().await.unwrap();
            client
        });
        server.write_all(&big).await.unwrap();
        server.flush().await.unwrap();
        let mut client = reader.await.unwrap();
        let mut got = vec![0u8; 70_000];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, pattern(70_000));
        assert!(holds_nothing(&server));

        // close_notify ends the stream cleanly, both ways.
        client.shutdown().await.unwrap();
        assert_eq!(server.read(&mut buf).await.unwrap(), 0);
        server.shutdown().await.unwrap();
        assert_eq!(client.read(&mut buf).await.unwrap(), 0);
    }

    /// Records arriving a few bytes at a time: the incomplete tail is kept.
    #[tokio::test]
    async fn records_split_across_reads() {
        let setup = setup().await;
        let address = setup.listener.local_addr().unwrap();
        // A proxy that passes the client's bytes on seven at a time.
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_address = proxy.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut from_client, _) = proxy.accept().await.unwrap();
            let mut to_server = TcpStream::connect(address).await.unwrap();
            to_server.set_nodelay(true).unwrap();
            let (mut client_read, mut client_write) = from_client.split();
            let (mut server_read, mut server_write) = to_server.split();
            let upstream = async {
                let mut buf = [0u8; 7];
                loop {
                    let n = client_read.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        let _ = server_write.shutdown().await;
                        return;
                    }
                    server_write.write_all(&buf[..n]).await.unwrap();
                    tokio::time::sleep(std::time::Duration::from_micros(200)).await;
                }
            };
            let downstream = async {
                let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                let _ = client_write.shutdown().await;
            };
            tokio::join!(upstream, downstream);
        });
        let connector = setup.client.clone();
        let client = tokio::spawn(async move {
            let tcp = TcpStream::connect(proxy_address).await.unwrap();
            let name = ServerName::try_from("localhost").unwrap();
            let mut client = connector.connect(name, tcp).await.unwrap();
            client.write_all(&pattern(3_000)).await.unwrap();
            client.flush().await.unwrap();
            client
        });
        let (tcp, _) = setup.listener.accept().await.unwrap();
        let mut server = accept(setup.server.clone(), tcp).await.unwrap();
        let mut got = vec![0u8; 3_000];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got, pattern(3_000));
        assert!(holds_nothing(&server));
        drop(client.await.unwrap());
    }

    /// Not TLS at all: the handshake fails, nothing panics.
    #[tokio::test]
    async fn plaintext_instead_of_a_handshake_fails() {
        let setup = setup().await;
        let address = setup.listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut tcp = TcpStream::connect(address).await.unwrap();
            tcp.write_all(b"<?xml version='1.0'?><stream:stream>")
                .await
                .unwrap();
            let mut answer = Vec::new();
            let _ = tcp.read_to_end(&mut answer).await;
            answer
        });
        let (tcp, _) = setup.listener.accept().await.unwrap();
        let result = accept(setup.server.clone(), tcp).await;
        assert!(
            matches!(result, Err(TlsError::Tls(_))),
            "{:?}",
            result.err()
        );
        drop(result);
        // rustls answers with an alert record (content type 21).
        let answer = client.await.unwrap();
        assert_eq!(answer.first(), Some(&21));
    }

    /// A forged record after the handshake fails that connection's read with an
    /// error; the peer gets an alert.
    #[tokio::test]
    async fn forged_record_fails_the_connection() {
        let setup = setup().await;
        let (mut server, mut client) = pair(&setup).await;
        let mut record = vec![23, 3, 3, 0, 40];
        record.extend_from_slice(&[0x55; 40]);
        client.get_mut().0.write_all(&record).await.unwrap();
        let mut buf = [0u8; 64];
        let error = server.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        assert!(server.read(&mut buf).await.is_err());
        assert!(server.write_all(b"x").await.is_err());
        assert!(client.read(&mut buf).await.is_err());
    }
}
