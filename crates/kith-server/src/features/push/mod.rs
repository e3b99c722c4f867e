//! Push notifications: XEP-0357 (Push Notifications) registration, and three
//! senders that wake a device which is offline when a message for it is logged.
//!
//! A device registers with `<enable xmlns='urn:xmpp:push:0' jid='…' node='…'/>`
//! (§5), optionally with a publish-options data form, and stops with
//! `<disable/>` (§6). Registrations belong to the device (resource) that made
//! them and are stored (`kith-store/src/push.rs`). What `jid` names picks the sender:
//!
//! * **another entity** — the standard XEP-0357 §5 publish: an `<iq type='set'>`
//!   pubsub publish of a `urn:xmpp:push:summary` form to the app server, with the
//!   client's publish-options form echoed. It goes through [`crate::deliver::route`];
//!   kith has no server-to-server links yet, so an app server on another domain
//!   gets a bounce today (a local JID works).
//! * **the server's own domain, with a form holding `endpoint`, `p256dh` and
//!   `auth`** — built-in Web Push for browsers ([`webpush`]: RFC 8030 delivery,
//!   RFC 8291 aes128gcm payload encryption, RFC 8292 VAPID). The VAPID key pair is
//!   made on first start and kept in the store; its public key is served at
//!   `GET /api/v1/push/vapid` for `pushManager.subscribe()`.
//! * **the server's own domain otherwise** — the operator's webhook ([`webhook`]),
//!   a relay to FCM/APNs: a JSON POST signed with HMAC-SHA256.
//!
//! [`on_logged`] is called by `deliver.rs` once a message is durable in a user's
//! inbox log (and by a group's fan-out for each member). It never blocks
//! delivery: it looks at the message, and if it may wake someone, hands it to one
//! task ([`run`]) that looks up registrations one user at a time (a 1,024-member
//! group's message must not become 1,024 concurrent queries: they took the
//! pool's connections from everything else for seconds). A device counts as offline when no session has
//! its resource, or its session is detached (the connection dropped and it waits
//! for XEP-0198 resumption). Sends are bounded (`[push] concurrency`, `queue`),
//! retried with exponential backoff on 429/5xx/network errors, and a Web Push
//! subscription the push service calls gone (404/410) is removed. A notification
//! waiting to be sent absorbs later messages for the same registration: it
//! carries the count of messages the device has not received when it is sent.
//! Notifications carry no message text unless `[push] include_body = true`.

mod publish;
pub(crate) mod webhook;
pub(crate) mod webpush;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kith_proto::{Element, Jid, StanzaError, ns};
use kith_store::{PushEnabled, PushKind, PushRegistration, Store};
use tokio::sync::Semaphore;

use super::{Request, Response, Target};
use crate::Server;
use crate::config::Config;
use crate::session::Session;

/// XEP-0357 namespace (also its disco feature on the account).
pub(crate) const NS: &str = "urn:xmpp:push:0";

/// The most message text a notification carries (when bodies are on): Web Push
/// payloads must stay under 4 KiB once encrypted (RFC 8030 §7.2).
const MAX_BODY_CHARS: usize = 512;
/// `message-count` is capped: a phone shows "999+" anyway.
const MAX_COUNT: i64 = 999;
/// Longest `jid` and `node` accepted in `<enable/>`.
const MAX_NODE_LEN: usize = 1024;
/// Largest publish-options form kept, serialised.
const MAX_OPTIONS_LEN: usize = 4096;
/// How long a user's registrations are cached before the store is asked again
/// (other nodes sharing the database may change them).
const CACHE_TTL: Duration = Duration::from_secs(30);
/// Users whose registrations are cached at most (the cache is emptied past this).
const CACHE_MAX: usize = 100_000;
/// Logged messages waiting for the registration lookup at most (past it, a
/// message wakes nobody: push is best effort, delivery is not).
const LOOKUPS_QUEUED: usize = 65_536;

/// The shared push state: VAPID key, HTTP client, limits and caches.
pub(crate) struct Push {
    vapid: webpush::VapidKey,
    http: reqwest::Client,
    permits: Arc<Semaphore>,
    /// Notifications queued or in flight.
    queued: AtomicUsize,
    /// Registrations with a notification waiting to be sent (owner, jid, node).
    waiting: Mutex<HashSet<(String, String, String)>>,
    cache: Mutex<HashMap<String, Cached, crate::router::Hasher>>,
    /// Logged messages for [`run`], which takes the receiver.
    lookups: tokio::sync::mpsc::Sender<Trigger>,
    lookups_rx: Mutex<Option<tokio::sync::mpsc::Receiver<Trigger>>>,
}

/// A user's registrations and when they were read.
type Cached = (Instant, Arc<[PushRegistration]>);

impl Push {
    /// Loads (or on first start creates) the VAPID key and builds the HTTP client.
    pub(crate) async fn start(config: &Config, store: &Store) -> anyhow::Result<Push> {
        let vapid = webpush::VapidKey::load_or_create(store).await?;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.push.request_timeout_secs))
            .connect_timeout(Duration::from_secs(config.push.request_timeout_secs))
            // A push endpoint has no business redirecting the server elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("kith/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let (lookups, lookups_rx) = tokio::sync::mpsc::channel(LOOKUPS_QUEUED);
        Ok(Push {
            vapid,
            http,
            permits: Arc::new(Semaphore::new(config.push.concurrency)),
            queued: AtomicUsize::new(0),
            waiting: Mutex::new(HashSet::new()),
            cache: Mutex::new(HashMap::default()),
            lookups,
            lookups_rx: Mutex::new(Some(lookups_rx)),
        })
    }

    /// The VAPID public key as a browser's `applicationServerKey` wants it:
    /// the uncompressed P-256 point, base64url without padding.
    pub(crate) fn vapid_public_key(&self) -> &str {
        self.vapid.public_key()
    }

    fn cached(&self, owner: &str) -> Option<Arc<[PushRegistration]>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        fresh(&cache, owner, Instant::now()).cloned()
    }

    pub(crate) fn invalidate(&self, owner: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(owner);
    }

    /// The registrations of `owner`, from the cache or the store.
    async fn registrations(&self, store: &Store, owner: &str) -> Option<Arc<[PushRegistration]>> {
        if let Some(registrations) = self.cached(owner) {
            return Some(registrations);
        }
        let registrations: Arc<[PushRegistration]> = match store.push_registrations(owner).await {
            Ok(registrations) => registrations.into(),
            Err(error) => {
                tracing::warn!(%error, "reading push registrations failed");
                return None;
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(owner.to_owned(), (Instant::now(), registrations.clone()));
        Some(registrations)
    }
}

/// Handles `<enable/>` and `<disable/>` (XEP-0357 §5, §6) on the user's own account.
pub(crate) async fn handle(session: &mut Session, request: &Request<'_>) -> Response {
    if !request.set {
        return Err(StanzaError::bad_request());
    }
    if request.target != Target::OwnAccount {
        return Err(StanzaError::service_unavailable());
    }
    let server = session.server.clone();
    let config = &server.config.push;
    if !config.enabled {
        return Err(StanzaError::service_unavailable());
    }
    match request.payload.name.as_str() {
        "enable" => {
            let parsed = parse_enable(
                request.payload,
                &server.domain,
                config.allow_loopback_endpoints,
                config.webhook_url.is_some(),
            )?;
            let registration = PushRegistration {
                resource: session.device_key.clone(),
                jid: parsed.jid,
                node: parsed.node,
                kind: parsed.kind,
                options: parsed.options,
                created_micros: crate::now_micros(),
            };
            let outcome = server
                .store
                .push_enable(
                    &session.username,
                    &registration,
                    config.max_registrations_per_user,
                )
                .await;
            server.forget(crate::cluster::CacheKind::Push, &session.username);
            match outcome {
                Ok(PushEnabled::Stored) => {
                    tracing::debug!(
                        user = %session.bare,
                        device = %registration.resource,
                        kind = kind_name(&registration.kind),
                        "push enabled"
                    );
                    Ok(None)
                }
                Ok(PushEnabled::LimitReached) => Err(StanzaError::new(
                    kith_proto::error::StanzaErrorCondition::ResourceConstraint,
                )
                .with_type(kith_proto::StanzaErrorType::Wait)
                .with_text("too many push registrations for this account")),
                Err(error) => {
                    tracing::error!(%error, "storing a push registration failed");
                    Err(StanzaError::internal())
                }
            }
        }
        "disable" => {
            let (jid, node) = parse_disable(request.payload)?;
            let removed = server
                .store
                .push_disable(&session.username, &jid, node.as_deref())
                .await;
            server.forget(crate::cluster::CacheKind::Push, &session.username);
            match removed {
                Ok(count) => {
                    tracing::debug!(user = %session.bare, count, "push disabled");
                    Ok(None)
                }
                Err(error) => {
                    tracing::error!(%error, "removing push registrations failed");
                    Err(StanzaError::internal())
                }
            }
        }
        _ => Err(StanzaError::service_unavailable()),
    }
}

fn kind_name(kind: &PushKind) -> &'static str {
    match kind {
        PushKind::AppServer => "app-server",
        PushKind::Webhook => "webhook",
        PushKind::WebPush { .. } => "webpush",
    }
}

/// A valid `<enable/>`.
#[derive(Debug, PartialEq, Eq)]
struct Enable {
    jid: String,
    node: String,
    kind: PushKind,
    /// The publish-options form to keep (not for Web Push, whose form holds keys).
    options: Option<String>,
}

fn bad_request(text: &str) -> StanzaError {
    StanzaError::bad_request().with_text(text)
}

/// Reads `<enable/>`: who to notify, and how.
fn parse_enable(
    payload: &Element,
    domain: &str,
    allow_loopback: bool,
    webhook_configured: bool,
) -> Result<Enable, StanzaError> {
    let jid = parse_jid(payload)?;
    let node = match payload.get_attr("node") {
        Some(node) if !node.is_empty() && node.len() <= MAX_NODE_LEN => node.to_owned(),
        Some(_) => return Err(bad_request("the node must be 1 to 1024 bytes")),
        None => return Err(bad_request("<enable/> needs a node")),
    };
    let mut forms = payload.elements().filter(|e| e.is("x", ns::DATA_FORMS));
    let form = forms.next();
    if forms.next().is_some() {
        return Err(bad_request("at most one publish-options form"));
    }
    let fields = match form {
        Some(form) => {
            if !matches!(form.get_attr("type"), None | Some("submit")) {
                return Err(bad_request(
                    "the publish-options form must be of type submit",
                ));
            }
            form_fields(form)?
        }
        None => Vec::new(),
    };
    let own_domain = jid == domain;
    let kind = if own_domain && fields.iter().any(|(var, _)| var == "endpoint") {
        webpush::subscription_from_form(&fields, allow_loopback)?
    } else if own_domain {
        if !webhook_configured {
            return Err(
                StanzaError::new(kith_proto::error::StanzaErrorCondition::NotAcceptable).with_text(
                    "this server sends no push notifications by itself without a Web Push \
                 subscription (endpoint, p256dh, auth)",
                ),
            );
        }
        PushKind::Webhook
    } else {
        PushKind::AppServer
    };
    let options = match (&kind, form) {
        (PushKind::WebPush { .. }, _) | (_, None) => None,
        (_, Some(form)) => {
            let mut form = form.clone();
            form.set_attr("type", "submit");
            let xml = form.to_xml("");
            if xml.len() > MAX_OPTIONS_LEN {
                return Err(StanzaError::new(
                    kith_proto::error::StanzaErrorCondition::NotAcceptable,
                )
                .with_text("the publish-options form is too large"));
            }
            Some(xml)
        }
    };
    Ok(Enable {
        jid,
        node,
        kind,
        options,
    })
}

/// Reads `<disable/>`: the app server, and optionally one node (§6).
fn parse_disable(payload: &Element) -> Result<(String, Option<String>), StanzaError> {
    let jid = parse_jid(payload)?;
    let node = payload.get_attr("node").map(str::to_owned);
    Ok((jid, node))
}

fn parse_jid(payload: &Element) -> Result<String, StanzaError> {
    let Some(jid) = payload.get_attr("jid") else {
        return Err(bad_request("the jid attribute is required"));
    };
    Jid::new(jid)
        .map(|jid| jid.to_string())
        .map_err(|_| StanzaError::jid_malformed())
}

/// The fields of a data form (XEP-0004) as (var, values), FORM_TYPE included.
fn form_fields(form: &Element) -> Result<Vec<(String, Vec<String>)>, StanzaError> {
    let mut fields: Vec<(String, Vec<String>)> = Vec::new();
    for field in form.elements().filter(|e| e.is("field", ns::DATA_FORMS)) {
        let Some(var) = field.get_attr("var") else {
            return Err(bad_request("a form field without 'var'"));
        };
        if fields.iter().any(|(known, _)| known == var) {
            return Err(bad_request("a form field given twice"));
        }
        let values = field
            .elements()
            .filter(|e| e.is("value", ns::DATA_FORMS))
            .map(Element::text_content)
            .collect();
        fields.push((var.to_owned(), values));
    }
    Ok(fields)
}

/// The single value of `var` in `fields`, if present.
fn single_value<'a>(fields: &'a [(String, Vec<String>)], var: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(known, _)| known == var)
        .and_then(|(_, values)| values.first())
        .map(String::as_str)
}

/// What one notification says, whichever way it travels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Notification {
    /// The user's bare JID.
    pub user: String,
    /// The device (resource) being woken.
    pub device: String,
    /// Messages this device has not received yet (at least 1).
    pub count: i64,
    /// The bare JID of the last message's sender.
    pub sender: String,
    /// The last message's text, only with `[push] include_body = true`.
    pub body: Option<String>,
}

/// What a logged message leaves for the push task.
#[derive(Clone, Debug)]
struct Trigger {
    owner: String,
    sender: String,
    body: Option<String>,
}

/// Called once a message for `owner` is durable (in its inbox log, or in a
/// room's that owes it to the owner): wakes the owner's registered devices that
/// are offline. Never waits: the work is [`run`]'s.
pub(crate) fn on_logged(server: &Arc<Server>, owner: &str, message: &Arc<Element>) {
    on_logged_for(server, [owner], message);
}

/// `owner`'s registrations in `cache`, if looked up less than [`CACHE_TTL`]
/// before `now`.
fn fresh<'c>(
    cache: &'c HashMap<String, Cached, crate::router::Hasher>,
    owner: &str,
    now: Instant,
) -> Option<&'c Arc<[PushRegistration]>> {
    cache
        .get(owner)
        .filter(|(at, _)| now.saturating_duration_since(*at) < CACHE_TTL)
        .map(|(_, registrations)| registrations)
}

/// [`on_logged`] for the members a group message is for: the cache is looked
/// at once for all of them (per member, its lock and a clock read were a tenth
/// of a 1,024-member group's fan-out).
pub(crate) fn on_logged_for<'a>(
    server: &Arc<Server>,
    owners: impl IntoIterator<Item = &'a str>,
    message: &Arc<Element>,
) {
    let config = &server.config.push;
    if !config.enabled || !wakes_device(message) {
        return;
    }
    let wanted: Vec<&str> = {
        let cache = server.push.cache.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        owners
            .into_iter()
            .filter(|owner| !owner.is_empty())
            // Known to have no registrations: nothing to wake.
            .filter(|owner| !fresh(&cache, owner, now).is_some_and(|r| r.is_empty()))
            .collect()
    };
    if wanted.is_empty() {
        return;
    }
    let sender = message
        .get_attr("from")
        .and_then(|from| Jid::new(from).ok())
        .map(|from| from.to_bare().to_string())
        .unwrap_or_default();
    let body = config
        .include_body
        .then(|| message.child_text("body", ns::CLIENT))
        .flatten()
        .map(|body| truncate_chars(&body, MAX_BODY_CHARS));
    for owner in wanted {
        let trigger = Trigger {
            owner: owner.to_owned(),
            sender: sender.clone(),
            body: body.clone(),
        };
        tracing::trace!(owner, "message logged; checking push registrations");
        if server.push.lookups.try_send(trigger).is_err() {
            tracing::debug!(
                owner,
                "push lookups queue full; not waking the user's devices"
            );
        }
    }
}

/// The task that wakes devices for logged messages, one user at a time (the
/// lookups share the store's pool with everything else).
pub(crate) async fn run(server: Arc<Server>) {
    let taken = server
        .push
        .lookups_rx
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    let Some(mut lookups) = taken else {
        return;
    };
    while let Some(trigger) = lookups.recv().await {
        notify_offline_devices(&server, trigger).await;
    }
}

/// Whether a message is worth waking a phone for: it has text, or is end-to-end
/// encrypted (OMEMO), or is a call (XEP-0353). Receipts, markers, reactions and
/// chat states alone are not.
fn wakes_device(message: &Element) -> bool {
    message.elements().any(|child| {
        (child.name == "body" && child.ns == ns::CLIENT)
            || (child.name == "encrypted"
                && matches!(
                    child.ns.as_str(),
                    "eu.siacs.conversations.axolotl" | "urn:xmpp:omemo:2"
                ))
            || (child.name == "propose" && child.ns == "urn:xmpp:jingle-message:0")
    })
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

impl Push {
    /// Notifications queued or in flight (for metrics).
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }
}

/// Whether the device `resource` (its inbox-log key) of `bare` has a session that
/// is not detached (on this node; `Frame::Device` asks the others).
pub(crate) fn device_online(server: &Server, bare: &str, resource: &str) -> bool {
    server.router.with_sessions(bare, |sessions| {
        sessions
            .iter()
            .any(|s| s.device_key() == resource && !s.detached)
    })
}

async fn notify_offline_devices(server: &Arc<Server>, trigger: Trigger) {
    let Some(registrations) = server
        .push
        .registrations(&server.store, &trigger.owner)
        .await
    else {
        return;
    };
    let bare = format!("{}@{}", trigger.owner, server.domain);
    for registration in registrations.iter() {
        if device_online(server, &bare, &registration.resource) {
            continue;
        }
        enqueue(server, &trigger, registration);
    }
}

/// Queues one notification for a registration, unless one is already waiting
/// for it (that one will carry the new count) or the queue is full.
fn enqueue(server: &Arc<Server>, trigger: &Trigger, registration: &PushRegistration) {
    let push = &server.push;
    let key = (
        trigger.owner.clone(),
        registration.jid.clone(),
        registration.node.clone(),
    );
    {
        let mut waiting = push.waiting.lock().unwrap_or_else(|e| e.into_inner());
        if waiting.contains(&key) {
            return;
        }
        if push.queued.load(Ordering::Relaxed) >= server.config.push.queue {
            tracing::warn!(owner = %trigger.owner, "push queue full; dropping a notification");
            return;
        }
        waiting.insert(key.clone());
        push.queued.fetch_add(1, Ordering::Relaxed);
    }
    let server = server.clone();
    let trigger = trigger.clone();
    let registration = registration.clone();
    tokio::spawn(async move {
        let _queued = QueuedGuard(&server.push.queued);
        send(&server, trigger, registration, key).await;
    });
}

/// Counts a notification out of the queue when its task ends, however it ends.
struct QueuedGuard<'a>(&'a AtomicUsize);

impl Drop for QueuedGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How one delivery attempt went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Attempt {
    Delivered,
    /// The subscription no longer exists: remove the registration.
    Gone,
    /// Worth trying again later.
    Retry,
    /// Refused for good.
    Failed,
}

async fn send(
    server: &Arc<Server>,
    trigger: Trigger,
    registration: PushRegistration,
    key: (String, String, String),
) {
    let push = &server.push;
    let config = &server.config.push;
    let bare = format!("{}@{}", trigger.owner, server.domain);
    // In a cluster the device may be online on another node, which hands it
    // the message itself. Asked before a permit is taken: a node holding
    // other sessions of the user but not this device answers nothing, and
    // the question waits its whole time (the queued key keeps later
    // messages from asking again meanwhile).
    let elsewhere = match &server.cluster {
        Some(cluster) => cluster.device_online(&bare, &registration.resource).await,
        None => false,
    };
    let permit = match elsewhere {
        false => push.permits.clone().acquire_owned().await.ok(),
        true => None,
    };
    // From here on, a new message queues a new notification.
    push.waiting
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&key);
    let Some(permit) = permit else {
        return;
    };
    if device_online(server, &bare, &registration.resource) {
        // It came back while this waited; it reads its messages itself.
        return;
    }
    let count = server
        .store
        .push_pending_count(&trigger.owner, &registration.resource, MAX_COUNT)
        .await
        .unwrap_or(1)
        .max(1);
    let notification = Notification {
        user: bare,
        device: registration.resource.clone(),
        count,
        sender: trigger.sender,
        body: trigger.body,
    };
    let request = match &registration.kind {
        PushKind::AppServer => {
            drop(permit);
            let iq = publish::notification_iq(
                &notification,
                &registration.jid,
                &registration.node,
                registration.options.as_deref(),
            );
            tracing::debug!(
                user = %notification.user,
                device = %notification.device,
                "push: XEP-0357 publish"
            );
            crate::deliver::route(server, iq).await;
            return;
        }
        PushKind::WebPush {
            endpoint,
            p256dh,
            auth,
        } => webpush::request(
            &push.vapid,
            &notification,
            endpoint,
            p256dh,
            auth,
            &config.vapid_subject_for(&server.domain),
            config.webpush_ttl_secs,
        ),
        PushKind::Webhook => webhook::request(
            &notification,
            &registration.node,
            registration.options.as_deref(),
            config.webhook_url.as_deref().unwrap_or_default(),
            config.webhook_secret.as_deref().unwrap_or_default(),
        ),
    };
    let request = match request {
        Ok(request) => request,
        Err(error) => {
            tracing::warn!(
                %error,
                user = %notification.user,
                device = %notification.device,
                "push: cannot build the notification"
            );
            return;
        }
    };
    let mut permit = Some(permit);
    let mut delay = Duration::from_millis(config.retry_delay_ms);
    for attempt in 1..=config.attempts {
        let held = match permit.take() {
            Some(held) => held,
            None => match push.permits.clone().acquire_owned().await {
                Ok(held) => held,
                Err(_) => return,
            },
        };
        let outcome = request.send(&push.http).await;
        drop(held);
        tracing::debug!(
            user = %notification.user,
            device = %notification.device,
            target = %request.origin(),
            attempt,
            ?outcome,
            "push notification attempt"
        );
        match outcome {
            Attempt::Delivered => return,
            Attempt::Gone => {
                remove_gone(server, &trigger.owner, &registration).await;
                return;
            }
            Attempt::Failed => break,
            Attempt::Retry if attempt < config.attempts => {
                tokio::time::sleep(jittered(delay)).await;
                delay = delay.saturating_mul(2);
            }
            Attempt::Retry => break,
        }
    }
    tracing::warn!(
        user = %notification.user,
        device = %notification.device,
        target = %request.origin(),
        "push notification not delivered"
    );
}

/// `delay` plus up to a quarter more, so retries from many notifications spread out.
fn jittered(delay: Duration) -> Duration {
    let quarter = delay.as_millis() as u64 / 4;
    delay
        + Duration::from_millis(if quarter > 0 {
            rand::random::<u64>() % quarter
        } else {
            0
        })
}

/// The push service said the subscription is gone (RFC 8030 §7.3): forget it.
async fn remove_gone(server: &Arc<Server>, owner: &str, registration: &PushRegistration) {
    let removed = match &registration.kind {
        PushKind::WebPush { endpoint, .. } => {
            server
                .store
                .push_remove_webpush(owner, &registration.jid, &registration.node, endpoint)
                .await
        }
        _ => server
            .store
            .push_disable(owner, &registration.jid, Some(&registration.node))
            .await
            .map(|count| count > 0),
    };
    server.forget(crate::cluster::CacheKind::Push, owner);
    match removed {
        Ok(true) => tracing::info!(
            user = owner,
            device = %registration.resource,
            kind = kind_name(&registration.kind),
            "push subscription expired; registration removed"
        ),
        Ok(false) => {}
        Err(error) => tracing::warn!(%error, "removing an expired push registration failed"),
    }
}

/// An HTTP notification ready to send (and to send again).
pub(crate) struct HttpNotification {
    url: url::Url,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    /// Whether 404 also means "gone" (Web Push, RFC 8030 §7.3); a webhook
    /// must answer 410 to remove a registration.
    not_found_is_gone: bool,
}

impl HttpNotification {
    /// Where it goes, without path or query (those may hold capabilities).
    fn origin(&self) -> String {
        self.url.origin().ascii_serialization()
    }

    async fn send(&self, client: &reqwest::Client) -> Attempt {
        let mut request = client.post(self.url.clone()).body(self.body.clone());
        for (name, value) in &self.headers {
            request = request.header(*name, value);
        }
        match request.send().await {
            Ok(response) => classify(response.status().as_u16(), self.not_found_is_gone),
            Err(error) => {
                tracing::debug!(error = %error.without_url(), "push request failed");
                Attempt::Retry
            }
        }
    }
}

/// What an HTTP status means for a notification (RFC 8030 §5, §7.3; RFC 8292 §4).
pub(crate) fn classify(status: u16, not_found_is_gone: bool) -> Attempt {
    match status {
        200..=299 => Attempt::Delivered,
        410 => Attempt::Gone,
        404 if not_found_is_gone => Attempt::Gone,
        408 | 425 | 429 | 500..=599 => Attempt::Retry,
        _ => Attempt::Failed,
    }
}

/// Answer of `GET /api/v1/push/vapid`.
pub(crate) fn vapid_document(server: &Server) -> String {
    serde_json::json!({
        "publicKey": server.push.vapid_public_key(),
        "enabled": server.config.push.enabled,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enable(jid: &str, node: &str, fields: &[(&str, &str)]) -> Element {
        let mut payload = Element::new(NS, "enable")
            .attr("jid", jid)
            .attr("node", node);
        if !fields.is_empty() {
            let mut form = Element::new(ns::DATA_FORMS, "x").attr("type", "submit");
            for (var, value) in fields {
                form.push_child(
                    Element::new(ns::DATA_FORMS, "field")
                        .attr("var", *var)
                        .child(Element::new(ns::DATA_FORMS, "value").text(*value)),
                );
            }
            payload.push_child(form);
        }
        payload
    }

    const P256DH: &str =
        "BLn9b-VR0ca83knDNZ32dCHGyjJp-1riX9ZTN40MqV8K_LpQmLqxC_DoHvqvFXO_nGdAB4W9dogZb_sM-uV4JbY";
    const AUTH: &str = "_ordMnz7uTCmrpBTeUV4Bw";

    #[test]
    fn an_app_server_registration_keeps_its_publish_options() {
        let payload = enable(
            "push.example.org",
            "node-1",
            &[
                (
                    "FORM_TYPE",
                    "http://jabber.org/protocol/pubsub#publish-options",
                ),
                ("secret", "s3cr3t"),
            ],
        );
        let parsed = parse_enable(&payload, "localhost", false, false).expect("valid");
        assert_eq!(parsed.kind, PushKind::AppServer);
        assert_eq!(parsed.jid, "push.example.org");
        let options = parsed.options.expect("options kept");
        assert!(options.contains("s3cr3t"), "{options}");
    }

    #[test]
    fn the_own_domain_with_a_subscription_is_web_push() {
        let payload = enable(
            "localhost",
            "browser",
            &[
                ("endpoint", "https://push.example.net/send/abc"),
                ("p256dh", P256DH),
                ("auth", AUTH),
            ],
        );
        let parsed = parse_enable(&payload, "localhost", false, false).expect("valid");
        assert!(matches!(parsed.kind, PushKind::WebPush { .. }));
        assert_eq!(parsed.options, None, "keys are not kept twice");
    }

    #[test]
    fn the_own_domain_without_a_subscription_needs_the_webhook() {
        let payload = enable("localhost", "fcm-token", &[]);
        let refused = parse_enable(&payload, "localhost", false, false).expect_err("refused");
        assert_eq!(
            refused.condition,
            kith_proto::error::StanzaErrorCondition::NotAcceptable
        );
        let parsed = parse_enable(&payload, "localhost", false, true).expect("valid");
        assert_eq!(parsed.kind, PushKind::Webhook);
    }

    #[test]
    fn enable_needs_jid_and_node() {
        let no_node = Element::new(NS, "enable").attr("jid", "push.example.org");
        assert!(parse_enable(&no_node, "localhost", false, false).is_err());
        let no_jid = Element::new(NS, "enable").attr("node", "n");
        assert!(parse_enable(&no_jid, "localhost", false, false).is_err());
        let bad_jid = Element::new(NS, "enable")
            .attr("jid", "a@@b")
            .attr("node", "n");
        assert_eq!(
            parse_enable(&bad_jid, "localhost", false, false).map(|_| ()),
            Err(StanzaError::jid_malformed())
        );
    }

    #[test]
    fn only_messages_worth_a_notification_wake_a_device() {
        let body =
            Element::new(ns::CLIENT, "message").child(Element::new(ns::CLIENT, "body").text("hi"));
        assert!(wakes_device(&body));
        let receipt = Element::new(ns::CLIENT, "message")
            .child(Element::new("urn:xmpp:receipts", "received").attr("id", "x"));
        assert!(!wakes_device(&receipt));
        let omemo = Element::new(ns::CLIENT, "message")
            .child(Element::new("eu.siacs.conversations.axolotl", "encrypted"));
        assert!(wakes_device(&omemo));
    }

    #[test]
    fn statuses_are_classified() {
        assert_eq!(classify(201, true), Attempt::Delivered);
        assert_eq!(classify(410, false), Attempt::Gone);
        assert_eq!(classify(404, true), Attempt::Gone);
        assert_eq!(classify(404, false), Attempt::Failed);
        assert_eq!(classify(429, true), Attempt::Retry);
        assert_eq!(classify(503, true), Attempt::Retry);
        assert_eq!(classify(400, true), Attempt::Failed);
        assert_eq!(classify(413, true), Attempt::Failed);
    }

    #[test]
    fn bodies_are_cut_on_character_boundaries() {
        assert_eq!(truncate_chars("héllo", 2), "hé");
        assert_eq!(truncate_chars("hi", 10), "hi");
    }
}
