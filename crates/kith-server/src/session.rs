//! An authenticated, bound client session: reads client stanzas, stamps their
//! `from`, dispatches them, and writes what the router queues for this resource.
//!
//! Architecture Invariant: the server, not the client, sets `from`. Every stanza
//! from a client leaves this module carrying the session's full JID (RFC 6120
//! §8.1.2.1); a client-supplied `from` that isn't the session's own JID closes the
//! stream with `<invalid-from/>` (§4.9.3.9).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use kith_proto::{BareJid, Element, FullJid, Jid, StanzaError, StreamErrorCondition, ns};
use tokio::time::Instant;

use crate::Server;
use crate::c2s::Bound;
use crate::link::{LinkError, LinkRead, LinkWrite};
use crate::router::Outbound;
use crate::{deliver, features};

/// The state of one bound session, seen by the features that handle its stanzas.
pub(crate) struct Session {
    pub server: Arc<Server>,
    pub jid: FullJid,
    pub bare: BareJid,
    /// The account's username (the JID localpart).
    pub username: String,
    pub id: u64,
    /// Whether the client has sent initial presence (RFC 6121 §4.2).
    pub available: bool,
    /// Where the client sent directed presence, to send `unavailable` there at the end
    /// (RFC 6121 §4.6.3).
    pub directed: HashSet<String>,
    /// Stanzas for this client produced while handling its own stanza.
    pub replies: Vec<Element>,
    /// Stored offline messages up to this sequence number are among `replies`; they
    /// are removed from the store once written to the connection.
    pub written_through: Option<i64>,
}

type End = Option<(StreamErrorCondition, &'static str)>;

pub(crate) async fn run<R: LinkRead, W: LinkWrite>(
    server: Arc<Server>,
    bound: Bound,
    mut reader: R,
    mut writer: W,
) {
    let Bound { jid, id, mut rx } = bound;
    let bare = jid.to_bare();
    let username = bare
        .node()
        .map(|n| n.as_str().to_owned())
        .unwrap_or_default();
    let mut session = Session {
        server: server.clone(),
        jid,
        bare,
        username,
        id,
        available: false,
        directed: HashSet::new(),
        replies: Vec::new(),
        written_through: None,
    };
    let idle = Duration::from_secs(server.config.limits.idle_timeout_secs.max(1));
    let mut deadline = Instant::now() + idle;
    let mut pinged = false;

    let end: End = loop {
        let step: Result<(), End> = tokio::select! {
            event = reader.next_event() => {
                deadline = Instant::now() + idle;
                pinged = false;
                match event {
                    Ok(kith_proto::StreamEvent::Stanza(stanza)) => session.handle(stanza).await.map_err(Some),
                    Ok(kith_proto::StreamEvent::Close) => Err(None),
                    Ok(kith_proto::StreamEvent::Open(_)) => {
                        Err(Some((StreamErrorCondition::NotWellFormed, "unexpected stream header")))
                    }
                    Err(LinkError::Xml(error)) => Err(Some((error.condition, "invalid XML"))),
                    Err(LinkError::Eof | LinkError::Io(_)) => break None,
                }
            }
            outbound = rx.recv() => match outbound {
                Some(outbound) => write_outbound(&mut writer, outbound),
                None => Err(None),
            },
            () = tokio::time::sleep_until(deadline) => {
                if pinged {
                    Err(Some((StreamErrorCondition::ConnectionTimeout, "no answer to ping")))
                } else {
                    // XEP-0199 §4.1 client-to-server ping: a silent client must answer.
                    pinged = true;
                    deadline = Instant::now() + idle.min(Duration::from_secs(60));
                    session.replies.push(
                        Element::new(ns::CLIENT, "iq")
                            .attr("type", "get")
                            .attr("id", "kith-idle-ping")
                            .attr("from", server.domain.clone())
                            .attr("to", session.jid.to_string())
                            .child(Element::new(ns::PING, "ping")),
                    );
                    Ok(())
                }
            }
        };
        for reply in session.replies.drain(..) {
            writer.element(&reply);
        }
        let mut step = step;
        // Write everything already queued before paying for a flush.
        while step.is_ok() {
            match rx.try_recv() {
                Ok(outbound) => step = write_outbound(&mut writer, outbound),
                Err(_) => break,
            }
        }
        if writer.flush().await.is_err() {
            break None;
        }
        if let Some(seq) = session.written_through.take()
            && let Err(error) = server
                .store
                .inbox_remove_through(&session.username, seq)
                .await
        {
            tracing::error!(%error, "removing delivered offline messages failed");
        }
        if let Err(end) = step {
            break end;
        }
    };

    session.finish().await;
    if let Some((condition, text)) = end {
        tracing::debug!(jid = %session.jid, %condition, text, "closing session with a stream error");
        writer.element(&condition.to_element(Some(text)));
    }
    writer.close();
    writer.shutdown().await;
}

fn write_outbound<W: LinkWrite>(writer: &mut W, outbound: Outbound) -> Result<(), End> {
    match outbound {
        Outbound::Stanza(stanza) => {
            writer.element(&stanza);
            Ok(())
        }
        Outbound::Close(condition, text) => Err(Some((condition, text))),
    }
}

impl Session {
    /// Handles one top-level element from the client.
    async fn handle(
        &mut self,
        mut stanza: Element,
    ) -> Result<(), (StreamErrorCondition, &'static str)> {
        if stanza.ns != ns::CLIENT || !matches!(stanza.name.as_str(), "message" | "presence" | "iq")
        {
            return Err((
                StreamErrorCondition::UnsupportedStanzaType,
                "unsupported top-level element",
            ));
        }
        if let Some(from) = stanza.get_attr("from")
            && !self.is_own_address(from)
        {
            return Err((
                StreamErrorCondition::InvalidFrom,
                "the from address is not yours",
            ));
        }
        stanza.set_attr("from", self.jid.to_string());
        let to = match stanza.get_attr("to").map(Jid::new) {
            None => None,
            Some(Ok(to)) => Some(to),
            Some(Err(_)) => {
                if stanza.get_attr("type") != Some("error") {
                    self.replies
                        .push(StanzaError::jid_malformed().reply_to(&stanza));
                }
                return Ok(());
            }
        };
        match stanza.name.as_str() {
            "message" => deliver::message_from_client(self, stanza, to).await,
            "presence" => features::presence::from_client(self, stanza, to).await,
            _ => features::iq_from_client(self, stanza, to).await,
        }
        Ok(())
    }

    fn is_own_address(&self, from: &str) -> bool {
        match Jid::new(from) {
            Ok(jid) => match jid.try_as_full() {
                Ok(full) => *full == self.jid,
                Err(bare) => *bare == self.bare,
            },
            Err(_) => false,
        }
    }

    /// Leaves the router and tells contacts this resource is gone.
    async fn finish(&mut self) {
        let still_bound = self.server.router.unbind(&self.jid, self.id);
        if still_bound && self.available {
            features::presence::went_offline(self, None).await;
        }
    }

    /// Queues a reply for this session's own client.
    pub fn reply(&mut self, stanza: Element) {
        self.replies.push(stanza);
    }
}
