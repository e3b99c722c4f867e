//! Support for the micro-benchmarks in `benches/` (hidden: not an API).
//!
//! [`RoutePair`] is a real server (no listeners) with two accounts, each with
//! a bound, available session whose queue the benchmark reads in place of a
//! connection: routing a message from one to the other runs what a session
//! runs for a client's message (`deliver::route`: JID checks, blocking, the
//! inbox log append and its commit, the router, the recipient's queue), and no
//! socket.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use kith_proto::{Element, FullJid, ns};

use crate::router::Outbound;
use crate::{Config, Running, Server};

/// Two local sessions, `from` and `to`, on a server of their own.
pub struct RoutePair {
    running: Running,
    from: FullJid,
    to: String,
    /// What the recipient's connection would write.
    inbox: crate::queue::Receiver<Outbound>,
    /// Keeps the sender's session bound (its queue gets nothing here).
    _outbox: crate::queue::Receiver<Outbound>,
    sent: u64,
}

impl RoutePair {
    /// Starts a server whose data lives in `data_dir` (SQLite), with archiving
    /// as `archive` says, and binds the two sessions.
    pub async fn start(data_dir: &Path, archive: bool) -> Result<RoutePair> {
        let mut config = Config::default();
        config.server.data_dir = data_dir.to_owned();
        config.listen.c2s = String::new();
        config.listen.c2s_tls = String::new();
        config.listen.http = String::new();
        config.listen.https = String::new();
        config.listen.stun = String::new();
        config.archive.enabled = archive;
        config.limits.session_queue = 1 << 16;
        let running = Server::start(config).await?;
        let server = running.server.clone();
        for name in ["sender", "recipient"] {
            crate::accounts::create(&server.store, name, "bench-password-1")
                .await
                .with_context(|| format!("creating {name}"))?;
        }
        let (from, outbox) = available(&server, "sender")?;
        let (to, inbox) = available(&server, "recipient")?;
        Ok(RoutePair {
            running,
            from,
            to: to.to_bare().to_string(),
            inbox,
            _outbox: outbox,
            sent: 0,
        })
    }

    /// Routes `count` chat messages from `from` to `to`'s bare JID, all queued
    /// before the first commit is awaited (so they share commits as a busy
    /// session's do), then takes each from the recipient's queue. Returns the
    /// bytes the recipient's connection would have written.
    pub async fn route(&mut self, count: usize) -> Result<usize> {
        let server = &self.running.server;
        let mut commits = Vec::with_capacity(count);
        for _ in 0..count {
            self.sent += 1;
            let message = Element::new(ns::CLIENT, "message")
                .attr("from", self.from.to_string())
                .attr("to", self.to.clone())
                .attr("type", "chat")
                .attr("id", format!("m{}", self.sent))
                .child(Element::new(ns::CLIENT, "body").text(format!(
                    "message {} of a benchmark, about as long as a short chat line",
                    self.sent
                )));
            commits.push(crate::deliver::route(server, message).await);
        }
        for committed in commits {
            committed
                .ok_or_else(|| anyhow!("the message was not logged"))?
                .await
                .map_err(|_| anyhow!("the commit was dropped"))?;
        }
        let mut bytes = 0;
        for _ in 0..count {
            bytes += match self.inbox.recv().await {
                Some(Outbound::LoggedXml(xml, _)) => xml.len(),
                Some(other) => bail!("the recipient got {other:?}, not a logged message"),
                None => bail!("the recipient's queue closed"),
            };
        }
        Ok(bytes)
    }

    /// Stops the server.
    pub async fn stop(self) {
        self.running.shutdown().await;
    }
}

/// Binds a session for `username` and makes it available (initial presence
/// seen), as a client that logged in.
fn available(
    server: &Arc<Server>,
    username: &str,
) -> Result<(FullJid, crate::queue::Receiver<Outbound>)> {
    let bound = crate::c2s::bind_resource(server, username, None, Some("bench"), false)
        .map_err(|error| anyhow!("binding {username}: {error:?}"))?;
    let presence =
        Arc::new(Element::new(ns::CLIENT, "presence").attr("from", bound.jid.to_string()));
    server.router.update(&bound.jid, bound.id, |entry| {
        entry.presence = Some(presence)
    });
    // The caller holds the session's queue as long as it needs the resource.
    bound.unbind.disarm();
    Ok((bound.jid, bound.rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_routed_message_reaches_the_other_session_once_committed() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut pair = RoutePair::start(dir.path(), true).await.expect("starts");
        let one = pair.route(1).await.expect("one message");
        let hundred = pair.route(100).await.expect("a hundred messages");
        assert!(one > 100, "{one} bytes");
        assert!(
            hundred >= 100 * one,
            "{hundred} bytes for 100, {one} for one"
        );
        // Each is in the recipient's log: a device logging in now is owed them.
        let owed = pair
            .running
            .server
            .store
            .inbox_after("recipient", 0, 500)
            .await
            .expect("the log reads");
        assert_eq!(owed.len(), 101);
        assert!(
            owed.iter()
                .all(|entry| entry.xml.contains("of a benchmark"))
        );
        pair.stop().await;
    }
}
