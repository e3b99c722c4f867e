//! The operator's way into a running server: a Unix socket in the data
//! directory (`<data_dir>/admin.sock`, mode 0600, so only the account running
//! kith can use it) that `kith user del` and `kith device revoke` talk to.
//!
//! Through it a change takes effect the way the same change made by a user
//! does: a deleted account leaves its contacts' rosters (with roster pushes and
//! unavailable presence) and its groups, and its sessions end; a revoked
//! device's sessions end at once. With no server answering, the CLI changes the
//! store itself (see `kith`'s `main.rs`), and those effects wait for nothing:
//! there is nobody connected to tell.
//!
//! The protocol is one JSON request line and one JSON answer line per
//! connection ([`Request`], [`Answer`]). Each scale-out node has a socket of its
//! own; a request reaches the node whose data directory the CLI's configuration
//! names.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kith_proto::BareJid;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::Server;
use crate::config::Config;

/// The socket's file name in the data directory.
const SOCKET: &str = "admin.sock";
/// Longest request line read (a username and a device id fit many times over).
const MAX_REQUEST: u64 = 4096;
/// How long the CLI waits for an answer (deleting an account with many groups
/// and contacts takes a while; the server finishes what it started anyway).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server waits for a request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What the CLI asks of a running server.
#[derive(Debug, Deserialize, Serialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Delete an account and everything it owns (`kith user del`).
    UserDel { username: String },
    /// Revoke a device credential and end its sessions (`kith device revoke`).
    DeviceRevoke { username: String, id: String },
}

/// The server's answer.
#[derive(Debug, Deserialize, Serialize)]
pub struct Answer {
    /// Whether the account (or device) existed: `false` changed nothing.
    pub existed: bool,
    /// Sessions the change ended on this server.
    pub sessions: usize,
    /// Set when the request failed (and `existed` says nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where the socket of a server with this configuration lives.
pub fn socket_path(config: &Config) -> PathBuf {
    config.server.data_dir.join(SOCKET)
}

/// Asks the server that runs with `config`'s data directory. `Ok(None)`: no
/// server is listening there (no socket, or nobody behind it): nothing was
/// done. Any other failure to connect (e.g. no permission: a server run by
/// another account) is an error, not a reason to go around the server.
pub async fn ask(config: &Config, request: &Request) -> anyhow::Result<Option<Answer>> {
    let path = socket_path(config);
    let mut stream = match UnixStream::connect(&path).await {
        Ok(stream) => stream,
        Err(error) if nobody_there(&error) => return Ok(None),
        Err(error) => {
            return Err(anyhow::Error::new(error)
                .context(format!("connecting to the server's {}", path.display())));
        }
    };
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    let mut answer = String::new();
    tokio::time::timeout(
        ANSWER_TIMEOUT,
        BufReader::new(stream).read_line(&mut answer),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "the server did not answer within {ANSWER_TIMEOUT:?} (it may still finish the change)"
        )
    })??;
    if answer.is_empty() {
        anyhow::bail!("the server closed the admin connection without answering");
    }
    let answer: Answer = serde_json::from_str(&answer)?;
    if let Some(error) = &answer.error {
        anyhow::bail!("the server refused: {error}");
    }
    Ok(Some(answer))
}

/// Whether a failed connect means no server listens there.
fn nobody_there(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    )
}

/// Binds the socket, or returns `None` (with a warning) if another server
/// answers on it, the path holds something else, or it cannot be bound (e.g.
/// a path past the system's limit).
pub(crate) async fn bind(config: &Config) -> Option<UnixListener> {
    use std::os::unix::fs::FileTypeExt;
    let path = socket_path(config);
    let skip = |why: &str| {
        tracing::warn!(path = %path.display(), why, "no admin socket: `kith user del` and `kith device revoke` will not reach this server");
        None
    };
    match UnixStream::connect(&path).await {
        Ok(_) => return skip("another kith answers on it"),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        // A socket left by a server that stopped: nobody answers on it.
        Err(error) if error.kind() == std::io::ErrorKind::ConnectionRefused => {
            let is_socket =
                std::fs::symlink_metadata(&path).is_ok_and(|meta| meta.file_type().is_socket());
            if !is_socket {
                return skip("the path is not a socket");
            }
            if std::fs::remove_file(&path).is_err() {
                return skip("a stale socket could not be removed");
            }
        }
        Err(_) => return skip("the path cannot be used"),
    }
    match UnixListener::bind(&path).and_then(|listener| restrict(&path).map(|()| listener)) {
        Ok(listener) => Some(listener),
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "no admin socket: `kith user del` and `kith device revoke` will not reach this server");
            None
        }
    }
}

/// Only the owner may connect.
fn restrict(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

pub(crate) async fn serve(server: Arc<Server>, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(handle(server.clone(), stream));
            }
            Err(error) => {
                tracing::warn!(%error, "admin socket accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(server: Arc<Server>, stream: UnixStream) {
    // The socket's mode admits only its owner, but it is set just after the
    // bind: the peer is checked too (the socket's owner, or root).
    let owner = std::fs::metadata(socket_path(&server.config)).map(|meta| {
        use std::os::unix::fs::MetadataExt;
        meta.uid()
    });
    let peer = stream.peer_cred().map(|cred| cred.uid());
    if !matches!((owner, peer), (Ok(owner), Ok(peer)) if peer == owner || peer == 0) {
        tracing::warn!("admin socket: a connection from another account refused");
        return;
    }
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let read = tokio::time::timeout(
        REQUEST_TIMEOUT,
        BufReader::new(read.take(MAX_REQUEST)).read_line(&mut line),
    )
    .await;
    let answer = match read {
        Ok(Ok(_)) => match serde_json::from_str::<Request>(&line) {
            Ok(request) => run(&server, request).await,
            Err(error) => refused(format!("bad request: {error}")),
        },
        Ok(Err(error)) => refused(format!("reading the request: {error}")),
        Err(_) => refused(format!("no request within {REQUEST_TIMEOUT:?}")),
    };
    let Ok(mut out) = serde_json::to_vec(&answer) else {
        return;
    };
    out.push(b'\n');
    let _ = write.write_all(&out).await;
}

fn refused(error: String) -> Answer {
    Answer {
        existed: false,
        sessions: 0,
        error: Some(error),
    }
}

async fn run(server: &Arc<Server>, request: Request) -> Answer {
    match request {
        Request::UserDel { username } => {
            let Ok(bare) = BareJid::new(&crate::api::jid_of(server, &username)) else {
                return refused(format!("{username:?} is no username"));
            };
            let sessions = server.router.sessions(bare.as_str()).len();
            match crate::features::register::delete_account(server, &bare).await {
                Ok(existed) => {
                    tracing::info!(user = %username, sessions, "account deleted by the operator");
                    Answer {
                        existed,
                        sessions: if existed { sessions } else { 0 },
                        error: None,
                    }
                }
                Err(error) => refused(
                    error
                        .text
                        .unwrap_or_else(|| error.condition.as_str().to_owned()),
                ),
            }
        }
        Request::DeviceRevoke { username, id } => {
            match crate::api::devices::revoke_device(server, &username, &id).await {
                Ok(found) => Answer {
                    existed: found.is_some(),
                    sessions: found.unwrap_or(0),
                    error: None,
                },
                Err(error) => refused(error.to_string()),
            }
        }
    }
}
