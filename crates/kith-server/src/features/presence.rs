//! Presence (RFC 6121 §4): initial presence, broadcast to subscribers, probes
//! answered from the session table, directed presence, unavailable on exit, and the
//! routing of subscription requests (§3) through the state machine in `roster.rs`.

use std::sync::Arc;

use kith_proto::{BareJid, Element, Jid, StanzaError, ns};
use kith_store::Subscription;

use super::roster::{self, SubscriptionKind};
use crate::Server;
use crate::cluster::Select;
use crate::session::Session;

/// A presence stanza from the session's own client.
pub(crate) async fn from_client(session: &mut Session, mut presence: Element, to: Option<Jid>) {
    let kind = presence.get_attr("type").unwrap_or("").to_owned();
    if let Some(subscription) = SubscriptionKind::parse(&kind) {
        let Some(to) = to else {
            session.reply(StanzaError::bad_request().reply_to(&presence));
            return;
        };
        outbound_subscription(session, presence, to.to_bare(), subscription).await;
        return;
    }
    match (kind.as_str(), to) {
        // RFC 6121 §4.3: clients don't probe; the server does it for them.
        ("probe", _) => {}
        ("error", Some(_)) => {
            crate::deliver::route(&session.server, presence).await;
        }
        ("" | "unavailable", Some(to))
            if to.to_bare() != session.bare || to.resource().is_some() =>
        {
            directed(session, presence, to, kind == "unavailable").await;
        }
        ("", _) => broadcast_available(session, presence).await,
        ("unavailable", _) => {
            presence.remove_attr("to");
            went_offline(session, Some(presence)).await;
            session.available = false;
            let server = session.server.clone();
            server
                .router
                .update(&session.jid, session.id, |entry| entry.presence = None);
        }
        _ => session.reply(
            StanzaError::bad_request()
                .with_text("unknown presence type")
                .reply_to(&presence),
        ),
    }
}

/// RFC 6121 §4.6: presence sent to one entity, remembered so it gets `unavailable`
/// when this resource goes away.
async fn directed(session: &mut Session, presence: Element, to: Jid, unavailable: bool) {
    let target = to.to_string();
    if unavailable {
        session.directed.remove(&target);
    } else {
        session.directed.insert(target);
    }
    let server = session.server.clone();
    super::pep::directed_presence(&server, &session.jid, &to, &presence, unavailable).await;
    crate::deliver::route(&server, presence).await;
}

fn priority(presence: &Element) -> Result<i8, StanzaError> {
    match presence.child_text("priority", ns::CLIENT) {
        None => Ok(0),
        // RFC 6121 §4.7.2.3: an integer from -128 to +127.
        Some(text) => text.trim().parse::<i8>().map_err(|_| {
            StanzaError::bad_request().with_text("priority must be an integer from -128 to 127")
        }),
    }
}

async fn broadcast_available(session: &mut Session, mut presence: Element) {
    let priority = match priority(&presence) {
        Ok(priority) => priority,
        Err(error) => {
            session.reply(error.reply_to(&presence));
            return;
        }
    };
    presence.remove_attr("to");
    let server = session.server.clone();
    // XEP-0153 / XEP-0398: the server's copy of the photo hash goes out.
    super::profile::stamp_presence(&server, &session.username, &mut presence).await;
    let initial = !session.available;
    session.available = true;
    let previous = server
        .router
        .with_sessions(session.bare.as_str(), |sessions| {
            sessions
                .iter()
                .find(|s| s.id == session.id)
                .and_then(|s| s.presence.clone())
        });
    // XEP-0163 §4.3.3: a resource coming online (or with new caps) gets the last
    // published items it asks for with +notify.
    let announce = initial
        || previous.is_none_or(|p| {
            super::pep::caps::Announced::of(&p) != super::pep::caps::Announced::of(&presence)
        });
    let shared = Arc::new(presence.clone());
    server.router.update(&session.jid, session.id, |entry| {
        entry.presence = Some(shared.clone());
        entry.priority = priority;
    });
    let roster = match server.store.roster(&session.username).await {
        Ok((_, items)) => items,
        Err(error) => {
            tracing::error!(%error, "reading the roster for presence");
            Vec::new()
        }
    };
    // RFC 6121 §4.2.2 / §4.4.2: to every contact subscribed to us, and to our own
    // other available resources.
    for item in roster
        .iter()
        .filter(|i| matches!(i.subscription, Subscription::From | Subscription::Both))
    {
        let mut copy = presence.clone();
        copy.set_attr("to", item.contact.clone());
        crate::deliver::route(&server, copy).await;
    }
    for other in server.router.sessions(session.bare.as_str()) {
        if other.id != session.id && other.available() {
            let mut copy = presence.clone();
            copy.set_attr("to", other.jid.to_string());
            other.send(Arc::new(copy));
        }
    }
    if let Some(cluster) = &server.cluster {
        cluster.hand_each(session.bare.as_str(), Select::Available, &presence);
    }
    super::pep::on_available(&server, &session.jid, &presence, announce).await;
    if !initial {
        if priority >= 0 {
            // A resource that was negative becomes a delivery target now.
            session.start_catch_up().await;
        }
        return;
    }
    // RFC 6121 §4.2.2: probe the contacts we're subscribed to, answered at once from
    // the session table (all contacts are local), and our own other resources; in a
    // cluster, other nodes answer for the sessions they hold.
    let cluster = server.cluster.as_ref();
    let prober = session.jid.to_string();
    for item in roster
        .iter()
        .filter(|i| matches!(i.subscription, Subscription::To | Subscription::Both))
    {
        let Ok(contact) = Jid::new(&item.contact) else {
            continue;
        };
        if server.blocks(&session.username, &contact).await {
            continue;
        }
        if let Some(cluster) = cluster {
            cluster.probe(&item.contact, &prober);
        }
        for other in server.router.sessions(&item.contact) {
            if let Some(their) = &other.presence {
                session.reply(addressed(their, &session.jid.to_string()));
            }
        }
    }
    if let Some(cluster) = cluster {
        cluster.probe(session.bare.as_str(), &prober);
    }
    for other in server.router.sessions(session.bare.as_str()) {
        if other.id != session.id
            && let Some(their) = &other.presence
        {
            session.reply(addressed(their, &session.jid.to_string()));
        }
    }
    // RFC 6121 §3.1.3: requests that arrived while offline are presented again.
    for item in roster.iter().filter(|i| i.pending_in) {
        let request =
            roster::subscription_presence(&item.contact, session.bare.as_str(), "subscribe");
        session.reply(request);
    }

    // XEP-0160: what the device missed follows initial presence (RFC 6121 §8.5.2.1.1:
    // not to a resource with negative priority).
    if priority >= 0 {
        session.start_catch_up().await;
    }
}

/// A copy of `presence` addressed to `to`.
fn addressed(presence: &Element, to: &str) -> Element {
    let mut copy = presence.clone();
    copy.set_attr("to", to);
    copy
}

/// Tells contacts, our other resources and directed-presence recipients that this
/// resource is unavailable, and records last activity when it was the last one.
pub(crate) async fn went_offline(session: &mut Session, presence: Option<Element>) {
    let server = session.server.clone();
    let mut presence = presence
        .unwrap_or_else(|| Element::new(ns::CLIENT, "presence").attr("type", "unavailable"));
    presence.set_attr("from", session.jid.to_string());
    let status = presence
        .child_text("status", ns::CLIENT)
        .unwrap_or_default();
    if session.available {
        if let Ok((_, roster)) = server.store.roster(&session.username).await {
            for item in roster
                .iter()
                .filter(|i| matches!(i.subscription, Subscription::From | Subscription::Both))
            {
                crate::deliver::route(&server, addressed(&presence, &item.contact)).await;
            }
        }
        for other in server.router.sessions(session.bare.as_str()) {
            if other.id != session.id && other.available() {
                other.send(Arc::new(addressed(&presence, &other.jid.to_string())));
            }
        }
        if let Some(cluster) = &server.cluster {
            cluster.hand_each(session.bare.as_str(), Select::Available, &presence);
        }
    }
    for target in std::mem::take(&mut session.directed) {
        if let Ok(to) = Jid::new(&target) {
            super::pep::directed_presence(&server, &session.jid, &to, &presence, true).await;
        }
        crate::deliver::route(&server, addressed(&presence, &target)).await;
    }
    let others_available = server
        .router
        .with_sessions(session.bare.as_str(), |sessions| {
            sessions.iter().any(|s| s.id != session.id && s.available())
        });
    if !others_available {
        let now = crate::now_micros() / 1_000_000;
        if let Err(error) = server
            .store
            .set_last_activity(&session.username, now, &status)
            .await
        {
            tracing::warn!(%error, "recording last activity");
        }
    }
}

/// A subscription request, approval or cancellation from the user (RFC 6121 §3).
async fn outbound_subscription(
    session: &mut Session,
    presence: Element,
    contact: BareJid,
    kind: SubscriptionKind,
) {
    let server = session.server.clone();
    if contact == session.bare {
        return;
    }
    let current = match server
        .store
        .roster_item(&session.username, contact.as_str())
        .await
    {
        Ok(current) => current,
        Err(error) => {
            session.reply(roster::internal(error).reply_to(&presence));
            return;
        }
    };
    let outcome = roster::outbound(current.as_ref(), contact.as_str(), kind);
    if let Some(item) = &outcome.item
        && let Err(error) =
            roster::save_and_push(&server, &session.bare, &session.username, item).await
    {
        session.reply(error.reply_to(&presence));
        return;
    }
    if !outcome.route {
        return;
    }
    // RFC 6121 §3.1.2: subscription stanzas go out from the bare JID.
    let mut stanza = presence;
    stanza.set_attr("from", session.bare.to_string());
    stanza.set_attr("to", contact.to_string());
    if kind == SubscriptionKind::Unsubscribed {
        // §3.2.2: the contact stops seeing our presence at once.
        hide_from(&server, &session.bare, contact.as_str()).await;
    }
    crate::deliver::route(&server, stanza).await;
}

/// A presence stanza for a local user, after blocking checks (from `deliver::route`).
pub(crate) async fn inbound(server: &Arc<Server>, presence: Element, to: &Jid) {
    let kind = presence.get_attr("type").unwrap_or("").to_owned();
    let recipient = to.to_bare();
    if let Some(subscription) = SubscriptionKind::parse(&kind) {
        inbound_subscription(server, presence, &recipient, subscription).await;
        return;
    }
    if kind == "probe" {
        return;
    }
    if let Some(cluster) = &server.cluster {
        let select = match to.resource() {
            Some(resource) => Select::Resource(resource.as_str().to_owned()),
            None => Select::Available,
        };
        cluster.hand(recipient.as_str(), select, &presence);
    }
    let shared = Arc::new(presence);
    server.router.with_sessions(recipient.as_str(), |sessions| {
        for session in sessions {
            let addressed_here = match to.resource() {
                Some(resource) => session.jid.resource().as_str() == resource.as_str(),
                // RFC 6121 §4.3.2 / §4.4.3: to a bare JID, every available resource.
                None => session.available(),
            };
            if addressed_here {
                session.send(shared.clone());
            }
        }
    });
}

async fn inbound_subscription(
    server: &Arc<Server>,
    presence: Element,
    recipient: &BareJid,
    kind: SubscriptionKind,
) {
    let Some(sender) = presence
        .get_attr("from")
        .and_then(|f| Jid::new(f).ok())
        .map(|f| f.to_bare())
    else {
        return;
    };
    let Some(username) = recipient.node().map(|n| n.as_str().to_owned()) else {
        return;
    };
    if sender == *recipient {
        return;
    }
    let current = match server.store.roster_item(&username, sender.as_str()).await {
        Ok(current) => current,
        // Unknown account: RFC 6121 §3.1.3 says ignore silently.
        Err(_) => return,
    };
    if current.is_none() && !server.store.user_exists(&username).await.unwrap_or(false) {
        return;
    }
    let outcome = roster::inbound(current.as_ref(), sender.as_str(), kind);
    if let Some(item) = &outcome.item
        && let Err(error) = roster::save_and_push(server, recipient, &username, item).await
    {
        // Not recorded: the sender hears why rather than wait on a request
        // nobody will see. A request refused for room is declined outright
        // (RFC 6121 §3.2: `unsubscribed` clears the sender's pending `ask`).
        let declined = kind == SubscriptionKind::Subscribe
            && error.condition == kith_proto::error::StanzaErrorCondition::NotAllowed;
        Box::pin(crate::deliver::route(server, error.reply_to(&presence))).await;
        if declined {
            let unsubscribed = roster::subscription_presence(
                recipient.as_str(),
                sender.as_str(),
                kind_str(SubscriptionKind::Unsubscribed),
            );
            Box::pin(crate::deliver::route(server, unsubscribed)).await;
        }
        return;
    }
    if outcome.deliver {
        let shared = Arc::new(roster::subscription_presence(
            sender.as_str(),
            recipient.as_str(),
            kind_str(kind),
        ));
        if let Some(cluster) = &server.cluster {
            cluster.hand(recipient.as_str(), Select::Available, &shared);
        }
        server.router.with_sessions(recipient.as_str(), |sessions| {
            for session in sessions.iter().filter(|s| s.available()) {
                session.send(shared.clone());
            }
        });
    }
    if let Some(reply) = outcome.auto_reply {
        let answer =
            roster::subscription_presence(recipient.as_str(), sender.as_str(), kind_str(reply));
        Box::pin(crate::deliver::route(server, answer)).await;
    }
    let approved = outcome.auto_reply == Some(SubscriptionKind::Subscribed)
        || (kind == SubscriptionKind::Subscribed && outcome.deliver);
    if approved {
        // RFC 6121 §3.1.5–§3.1.6: once subscribed, the subscriber gets the contact's
        // current presence. `subscriber` is whoever now receives presence.
        let (subscriber, contact) = if kind == SubscriptionKind::Subscribed {
            (recipient, &sender)
        } else {
            (&sender, recipient)
        };
        send_current_presence(server, contact, subscriber.as_str()).await;
        super::pep::subscription_approved(server, contact, subscriber).await;
    }
    if kind == SubscriptionKind::Unsubscribed && outcome.deliver {
        // §3.2.3: the contact's resources now appear unavailable to the recipient.
        if let Some(cluster) = &server.cluster {
            cluster.hide(sender.as_str(), recipient.as_str());
        }
        for session in server.router.sessions(sender.as_str()) {
            let unavailable = Element::new(ns::CLIENT, "presence")
                .attr("from", session.jid.to_string())
                .attr("to", recipient.to_string())
                .attr("type", "unavailable");
            Box::pin(inbound(server, unavailable, &Jid::from(recipient.clone()))).await;
        }
    }
}

fn kind_str(kind: SubscriptionKind) -> &'static str {
    match kind {
        SubscriptionKind::Subscribe => "subscribe",
        SubscriptionKind::Subscribed => "subscribed",
        SubscriptionKind::Unsubscribe => "unsubscribe",
        SubscriptionKind::Unsubscribed => "unsubscribed",
    }
}

/// Sends `owner`'s available presence again, with the current XEP-0153 photo
/// hash, to their subscribers and other resources (the vCard photo changed), from
/// every node.
pub(crate) async fn rebroadcast(server: &Arc<Server>, owner: &BareJid) {
    if let Some(cluster) = &server.cluster {
        cluster.rebroadcast(owner.as_str());
    }
    rebroadcast_locally(server, owner).await;
}

/// [`rebroadcast`] for this node's sessions.
pub(crate) async fn rebroadcast_locally(server: &Arc<Server>, owner: &BareJid) {
    let Some(username) = owner.node().map(|n| n.as_str().to_owned()) else {
        return;
    };
    let roster = match server.store.roster(&username).await {
        Ok((_, items)) => items,
        Err(error) => {
            tracing::error!(%error, "reading the roster for presence");
            return;
        }
    };
    let sessions = server.router.sessions(owner.as_str());
    for session in &sessions {
        let Some(current) = &session.presence else {
            continue;
        };
        let mut presence = (**current).clone();
        super::profile::stamp_presence(server, &username, &mut presence).await;
        let shared = Arc::new(presence.clone());
        server.router.update(&session.jid, session.id, |entry| {
            entry.presence = Some(shared)
        });
        for item in roster
            .iter()
            .filter(|i| matches!(i.subscription, Subscription::From | Subscription::Both))
        {
            crate::deliver::route(server, addressed(&presence, &item.contact)).await;
        }
        for other in &sessions {
            if other.id != session.id && other.available() {
                other.send(Arc::new(addressed(&presence, &other.jid.to_string())));
            }
        }
    }
}

/// Sends the current presence of every available resource of `owner` to `to`.
pub(crate) async fn send_current_presence(server: &Arc<Server>, owner: &BareJid, to: &str) {
    let Ok(target) = Jid::new(to) else {
        return;
    };
    if let Some(cluster) = &server.cluster {
        cluster.probe(owner.as_str(), to);
    }
    for session in server.router.sessions(owner.as_str()) {
        if let Some(presence) = &session.presence {
            let copy = addressed(presence, to);
            Box::pin(inbound(server, copy, &target)).await;
        }
    }
}

/// Makes every available resource of `owner` appear unavailable to `to` (used when
/// blocking, XEP-0191 §3.3, and when cancelling a subscription), on every node.
pub(crate) async fn hide_from(server: &Arc<Server>, owner: &BareJid, to: &str) {
    if let Some(cluster) = &server.cluster {
        cluster.hide(owner.as_str(), to);
    }
    hide_locally(server, owner, to).await;
}

/// [`hide_from`] for this node's sessions.
pub(crate) async fn hide_locally(server: &Arc<Server>, owner: &BareJid, to: &str) {
    let Ok(target) = Jid::new(to) else {
        return;
    };
    if !server.is_local_user(&target) {
        return;
    }
    for session in server.router.sessions(owner.as_str()) {
        if session.available() {
            let unavailable = Element::new(ns::CLIENT, "presence")
                .attr("from", session.jid.to_string())
                .attr("to", to)
                .attr("type", "unavailable");
            inbound(server, unavailable, &target).await;
        }
    }
}

/// Sends `owner`'s current presence to `to` again if `to` is subscribed to it (after
/// unblocking, XEP-0191 §3.4).
pub(crate) async fn reveal_to(server: &Arc<Server>, owner: &BareJid, to: &str) {
    let Some(username) = owner.node().map(|n| n.as_str().to_owned()) else {
        return;
    };
    let subscribed = matches!(
        server.store.roster_item(&username, to).await,
        Ok(Some(item)) if matches!(item.subscription, Subscription::From | Subscription::Both)
    );
    if subscribed && Jid::new(to).is_ok_and(|t| server.is_local_user(&t)) {
        send_current_presence(server, owner, to).await;
    }
}
