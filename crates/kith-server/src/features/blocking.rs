//! XEP-0191 Blocking Command: each user keeps a list of blocked JIDs (§3.2 get,
//! §3.3 block, §3.4 unblock, §3.5 unblock all), matched against senders with the
//! rules of §6 (those of XEP-0016 §2.1).
//!
//! This module owns the list and its in-memory [`Cache`], and answers the
//! question "does this user block that sender?" ([`Server::blocks`]). Enforcing
//! it — dropping or bouncing stanzas in either direction (§3.3) — is done by
//! `deliver.rs`, the one place every stanza between two users passes.
//!
//! Architecture Invariant: the cache never answers with a list older than the
//! last completed block or unblock. Writers update the store first and then
//! invalidate the cache; a reader that loaded from the store before an
//! invalidation does not put what it read into the cache.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use kith_proto::error::StanzaErrorCondition;
use kith_proto::{BareJid, Element, Jid, StanzaError, ns};
use kith_store::{RosterItem, Subscription};

use super::roster::internal;
use super::{Request, Response};
use crate::Server;
use crate::session::Session;

/// The most JIDs one user may block.
const MAX_BLOCKED: usize = 10_000;
/// Users whose lists the cache holds at most; beyond that it starts over.
const MAX_CACHED_USERS: usize = 100_000;

/// In-memory copy of users' blocklists, loaded from the store on first use.
#[derive(Default)]
pub struct Cache {
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    /// Username → the normalised JIDs on that user's blocklist.
    lists: HashMap<String, Arc<HashSet<String>>, crate::router::Hasher>,
    /// Bumped by every invalidation (see the module's invariant).
    epoch: u64,
}

/// What the cache says about one user.
enum Lookup {
    Cached(Arc<HashSet<String>>),
    /// Not cached; load from the store and hand this epoch back to [`Cache::fill`].
    Missing(u64),
}

impl Cache {
    fn lookup(&self, owner: &str) -> Lookup {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match inner.lists.get(owner) {
            Some(list) => Lookup::Cached(list.clone()),
            None => Lookup::Missing(inner.epoch),
        }
    }

    /// Whether the cached list of `owner` matches `sender`; `None` when not
    /// cached. Matched under the lock, no list handed out: every message
    /// asks twice, and most lists are empty.
    fn matches(&self, owner: &str, sender: &Jid) -> Option<bool> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.lists.get(owner).map(|list| matches(list, sender))
    }

    /// Caches `list`, read from the store after [`Cache::lookup`] returned `epoch`,
    /// unless an invalidation happened since (the list may then be stale).
    fn fill(&self, owner: &str, epoch: u64, list: Arc<HashSet<String>>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.epoch != epoch {
            return;
        }
        if inner.lists.len() >= MAX_CACHED_USERS {
            inner.lists.clear();
        }
        inner.lists.insert(owner.to_owned(), list);
    }

    /// Drops the user's cached list; call after every change to it in the store.
    pub(crate) fn invalidate(&self, owner: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.lists.remove(owner);
        inner.epoch = inner.epoch.wrapping_add(1);
    }
}

impl Server {
    /// Whether the local user `owner` (a username) blocks stanzas from `sender`.
    ///
    /// On a storage failure this answers `false` (and logs): the stanza then meets
    /// the same failing store on its way in, and blocking everything whenever the
    /// database hiccups would be worse.
    pub(crate) async fn blocks(&self, owner: &str, sender: &Jid) -> bool {
        if owner.is_empty() {
            return false;
        }
        // XEP-0191 §5 (note): never block one of the user's resources from another.
        if sender.domain().as_str() == self.domain
            && sender.node().is_some_and(|node| node.as_str() == owner)
        {
            return false;
        }
        if let Some(blocked) = self.blocklists.matches(owner, sender) {
            return blocked;
        }
        match self.blocklist(owner).await {
            Ok(list) => matches(&list, sender),
            Err(error) => {
                tracing::warn!(user = owner, %error, "reading the blocklist failed; not blocking");
                false
            }
        }
    }

    /// Whether either of two users blocks the other (only local users have lists).
    pub(crate) async fn blocked_between(&self, a: &BareJid, b: &BareJid) -> bool {
        if a == b {
            return false;
        }
        for (owner, other) in [(a, b), (b, a)] {
            if let Some(node) = owner.node()
                && self.is_local_user(owner)
                && self.blocks(node.as_str(), other).await
            {
                return true;
            }
        }
        false
    }

    /// The user's blocklist, from the cache or the store.
    async fn blocklist(&self, owner: &str) -> Result<Arc<HashSet<String>>, kith_store::StoreError> {
        let epoch = match self.blocklists.lookup(owner) {
            Lookup::Cached(list) => return Ok(list),
            Lookup::Missing(epoch) => epoch,
        };
        // Boxed: a cache miss is rare, and every message's handling would
        // otherwise carry the store read's state (`session::run`).
        let list: Arc<HashSet<String>> = Arc::new(
            Box::pin(self.store.blocklist(owner))
                .await?
                .into_iter()
                .collect(),
        );
        self.blocklists.fill(owner, epoch, list.clone());
        Ok(list)
    }
}

/// §6: whether any entry of `list` matches `jid`. The four forms of §6 are looked up
/// for the sender `user@domain/resource`: the full JID itself (an entry naming one
/// resource matches only it), the bare JID (any resource), `domain/resource` (that
/// resource at the domain, with or without a user — as ejabberd reads XEP-0016
/// §2.1) and the domain (everything at it). Entries and `jid` are both normalised.
fn matches(list: &HashSet<String>, jid: &Jid) -> bool {
    if list.is_empty() {
        return false;
    }
    let domain = jid.domain().as_str();
    if list.contains(jid.as_str()) || list.contains(domain) {
        return true;
    }
    let Some(resource) = jid.resource() else {
        return false;
    };
    if jid.node().is_none() {
        // `domain/resource`: its only other forms are itself and the domain.
        return false;
    }
    list.contains(kith_proto::bare_str(jid))
        || list.contains(&format!("{domain}/{}", resource.as_str()))
}

/// Answers `<blocklist/>` gets and `<block/>` / `<unblock/>` sets.
pub(crate) async fn handle(session: &mut Session, request: &Request<'_>) -> Response {
    // XEP-0191 §3: a user's blocklist is theirs alone.
    request.own_account_only()?;
    let payload = request.payload;
    match (payload.name.as_str(), request.set) {
        ("blocklist", false) => get(session).await,
        ("block", true) => block(session, payload).await,
        ("unblock", true) => unblock(session, payload).await,
        // A get of <block/>, a set of <blocklist/>…
        _ => Err(StanzaError::bad_request()),
    }
}

/// §3.2: the whole list (an empty <blocklist/> when nothing is blocked).
async fn get(session: &mut Session) -> Response {
    let list = session
        .server
        .blocklist(&session.username)
        .await
        .map_err(internal)?;
    let mut sorted: Vec<&String> = list.iter().collect();
    sorted.sort_unstable();
    Ok(Some(items_element(
        "blocklist",
        sorted.into_iter().map(String::as_str),
    )))
}

/// §3.3: adds the items to the list, tells every resource, and hides the user's
/// presence from contacts that are now blocked.
async fn block(session: &mut Session, payload: &Element) -> Response {
    let server = session.server.clone();
    let jids = parse_items(payload)?;
    if jids.is_empty() {
        // §3.3: a block MUST contain at least one item.
        return Err(StanzaError::bad_request().with_text("block at least one JID"));
    }
    let before = server
        .blocklist(&session.username)
        .await
        .map_err(internal)?;
    let added: HashSet<String> = jids
        .iter()
        .filter(|jid| !before.contains(*jid))
        .cloned()
        .collect();
    if before.len() + added.len() > MAX_BLOCKED {
        return Err(StanzaError::new(StanzaErrorCondition::PolicyViolation)
            .with_text(format!("at most {MAX_BLOCKED} JIDs can be blocked")));
    }
    let stored = server.store.block(&session.username, &jids).await;
    server.forget(crate::cluster::CacheKind::Blocklist, &session.username);
    stored.map_err(internal)?;

    push(
        &server,
        &session.bare,
        items_element("block", jids.iter().map(String::as_str)),
    );

    // §3.3: the user's server MUST send unavailable presence to the blocked JID if it
    // may receive the user's presence.
    let newly_blocked = Entries::new(&added);
    for item in presence_subscribers(&server, &session.username).await {
        let Ok(contact) = Jid::new(&item.contact) else {
            continue;
        };
        for target in newly_blocked.targets(&contact) {
            super::presence::hide_from(&server, &session.bare, &target).await;
        }
    }
    Ok(None)
}

/// §3.4 and §3.5: removes the items from the list (all of it when there are none),
/// tells every resource, and shows the user's current presence again to contacts
/// that are no longer blocked.
async fn unblock(session: &mut Session, payload: &Element) -> Response {
    let server = session.server.clone();
    let jids = parse_items(payload)?;
    let before = server
        .blocklist(&session.username)
        .await
        .map_err(internal)?;
    let removed: HashSet<String> = if jids.is_empty() {
        before.iter().cloned().collect()
    } else {
        jids.iter()
            .filter(|jid| before.contains(*jid))
            .cloned()
            .collect()
    };
    let stored = server.store.unblock(&session.username, &jids).await;
    server.forget(crate::cluster::CacheKind::Blocklist, &session.username);
    stored.map_err(internal)?;

    push(
        &server,
        &session.bare,
        items_element("unblock", jids.iter().map(String::as_str)),
    );

    // §3.4: the user's server MUST send the user's current presence to the unblocked
    // JID if it may receive it — unless an entry still left blocks the contact.
    let unblocked = Entries::new(&removed);
    let after = match server.blocklist(&session.username).await {
        Ok(after) => after,
        Err(error) => {
            // The unblock itself is done and pushed; only the presence update is lost.
            tracing::warn!(user = %session.username, %error, "reading the blocklist after an unblock");
            return Ok(None);
        }
    };
    let still_blocked = Entries::new(&after);
    for item in presence_subscribers(&server, &session.username).await {
        let Ok(contact) = Jid::new(&item.contact) else {
            continue;
        };
        if unblocked.targets(&contact).is_empty() || !still_blocked.targets(&contact).is_empty() {
            continue;
        }
        // `reveal_to` checks the subscription again and sends to all of the
        // contact's resources.
        super::presence::reveal_to(&server, &session.bare, contact.as_str()).await;
    }
    Ok(None)
}

/// The `jid`s of the `<item/>` children, normalised, without duplicates.
fn parse_items(payload: &Element) -> Result<Vec<String>, StanzaError> {
    let mut jids = Vec::new();
    let mut seen = HashSet::new();
    for item in payload.elements().filter(|e| e.is("item", ns::BLOCKING)) {
        let Some(raw) = item.get_attr("jid") else {
            return Err(StanzaError::bad_request().with_text("an item needs a jid"));
        };
        let jid = Jid::new(raw).map_err(|_| StanzaError::jid_malformed())?;
        let jid = jid.as_str().to_owned();
        if seen.insert(jid.clone()) {
            jids.push(jid);
        }
        if jids.len() > MAX_BLOCKED {
            return Err(
                StanzaError::new(StanzaErrorCondition::PolicyViolation).with_text("too many items")
            );
        }
    }
    Ok(jids)
}

/// `<name xmlns='urn:xmpp:blocking'><item jid='…'/>…</name>`.
fn items_element<'a>(name: &str, jids: impl Iterator<Item = &'a str>) -> Element {
    let mut element = Element::new(ns::BLOCKING, name);
    for jid in jids {
        element.push_child(Element::new(ns::BLOCKING, "item").attr("jid", jid));
    }
    element
}

/// §3.3/§3.4: a change to the list is pushed, like a roster push, to the user's
/// resources. The specification asks for those that requested the blocklist; the
/// session table does not record that, so every resource gets it (clients that
/// don't know the namespace answer with an error, which ends in `iq_from_client`).
fn push(server: &Server, owner: &BareJid, payload: Element) {
    super::push_iq(server, owner, crate::cluster::Select::All, payload);
}

/// The user's contacts that receive the user's presence (subscription `from` or
/// `both`, RFC 6121 §4.1). Empty on a storage failure, after logging it.
async fn presence_subscribers(server: &Server, username: &str) -> Vec<RosterItem> {
    match server.store.roster(username).await {
        Ok((_, items)) => items
            .into_iter()
            .filter(|item| matches!(item.subscription, Subscription::From | Subscription::Both))
            .collect(),
        Err(error) => {
            tracing::warn!(user = username, %error, "reading the roster to update presence after a block change");
            Vec::new()
        }
    }
}

/// Blocklist entries, indexed to find where a presence change for a contact goes.
struct Entries<'a> {
    all: &'a HashSet<String>,
    /// Bare JID → the entries that are one resource of it.
    resources: HashMap<String, Vec<&'a str>>,
}

impl<'a> Entries<'a> {
    fn new(all: &'a HashSet<String>) -> Self {
        let mut resources: HashMap<String, Vec<&'a str>> = HashMap::new();
        for entry in all {
            if let Ok(jid) = Jid::new(entry)
                && jid.resource().is_some()
            {
                resources
                    .entry(jid.to_bare().as_str().to_owned())
                    .or_default()
                    .push(entry);
            }
        }
        Entries { all, resources }
    }

    /// The addresses of `contact` (a roster item's bare JID) that these entries
    /// block: the contact itself when an entry matches it as a whole (§6), else the
    /// full JIDs of those of its resources that are listed one by one.
    fn targets(&self, contact: &Jid) -> Vec<String> {
        if matches(self.all, contact) {
            return vec![contact.as_str().to_owned()];
        }
        self.resources
            .get(contact.as_str())
            .map(|entries| entries.iter().map(|e| (*e).to_owned()).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> HashSet<String> {
        entries.iter().map(|e| (*e).to_owned()).collect()
    }

    fn jid(text: &str) -> Jid {
        Jid::new(text).unwrap_or_else(|error| panic!("{text}: {error}"))
    }

    #[test]
    fn full_jid_entry_matches_only_that_resource() {
        let blocked = list(&["romeo@montague.net/orchard"]);
        assert!(matches(&blocked, &jid("romeo@montague.net/orchard")));
        assert!(!matches(&blocked, &jid("romeo@montague.net/garden")));
        assert!(!matches(&blocked, &jid("romeo@montague.net")));
    }

    #[test]
    fn bare_jid_entry_matches_any_resource() {
        let blocked = list(&["romeo@montague.net"]);
        assert!(matches(&blocked, &jid("romeo@montague.net")));
        assert!(matches(&blocked, &jid("romeo@montague.net/orchard")));
        assert!(!matches(&blocked, &jid("benvolio@montague.net")));
        assert!(!matches(&blocked, &jid("montague.net")));
    }

    #[test]
    fn domain_resource_entry_matches_only_that_resource() {
        let blocked = list(&["montague.net/bot"]);
        assert!(matches(&blocked, &jid("montague.net/bot")));
        assert!(matches(&blocked, &jid("romeo@montague.net/bot")));
        assert!(!matches(&blocked, &jid("montague.net")));
        assert!(!matches(&blocked, &jid("romeo@montague.net")));
        assert!(!matches(&blocked, &jid("montague.net/other")));
    }

    #[test]
    fn domain_entry_matches_everything_at_the_domain() {
        let blocked = list(&["montague.net"]);
        for sender in [
            "montague.net",
            "montague.net/bot",
            "romeo@montague.net",
            "romeo@montague.net/orchard",
        ] {
            assert!(matches(&blocked, &jid(sender)), "{sender}");
        }
        assert!(!matches(&blocked, &jid("capulet.com")));
        assert!(!matches(&blocked, &jid("romeo@sub.montague.net")));
    }

    #[test]
    fn entries_are_normalised_like_senders() {
        let items = Element::new(ns::BLOCKING, "block")
            .child(Element::new(ns::BLOCKING, "item").attr("jid", "Romeo@Montague.NET"))
            .child(Element::new(ns::BLOCKING, "item").attr("jid", "romeo@montague.net"));
        let parsed = parse_items(&items).unwrap_or_default();
        assert_eq!(parsed, vec!["romeo@montague.net".to_owned()]);
        let blocked: HashSet<String> = parsed.into_iter().collect();
        assert!(matches(&blocked, &jid("ROMEO@montague.net/Orchard")));
    }

    #[test]
    fn malformed_items_are_refused() {
        let no_jid = Element::new(ns::BLOCKING, "block").child(Element::new(ns::BLOCKING, "item"));
        assert_eq!(
            parse_items(&no_jid).map_err(|e| e.condition),
            Err(StanzaErrorCondition::BadRequest)
        );
        let bad_jid = Element::new(ns::BLOCKING, "block")
            .child(Element::new(ns::BLOCKING, "item").attr("jid", "@@"));
        assert_eq!(
            parse_items(&bad_jid).map_err(|e| e.condition),
            Err(StanzaErrorCondition::JidMalformed)
        );
    }

    #[test]
    fn presence_targets_follow_the_entries() {
        let romeo = jid("romeo@montague.net");
        let nurse = jid("nurse@capulet.com");
        let bare = list(&["romeo@montague.net"]);
        assert_eq!(
            Entries::new(&bare).targets(&romeo),
            vec!["romeo@montague.net"]
        );
        assert!(Entries::new(&bare).targets(&nurse).is_empty());
        let domain = list(&["montague.net"]);
        assert_eq!(
            Entries::new(&domain).targets(&romeo),
            vec!["romeo@montague.net"]
        );
        let resources = list(&["romeo@montague.net/orchard", "tybalt@capulet.com/sword"]);
        assert_eq!(
            Entries::new(&resources).targets(&romeo),
            vec!["romeo@montague.net/orchard"]
        );
        assert!(Entries::new(&resources).targets(&nurse).is_empty());
    }

    #[test]
    fn cache_does_not_keep_a_list_read_before_an_invalidation() {
        let cache = Cache::default();
        let Lookup::Missing(epoch) = cache.lookup("juliet") else {
            panic!("empty cache has an entry");
        };
        // A block lands between the reader's lookup and its fill.
        cache.invalidate("juliet");
        cache.fill("juliet", epoch, Arc::new(list(&[])));
        assert!(matches!(cache.lookup("juliet"), Lookup::Missing(_)));
        // A reader that started afterwards may fill.
        let Lookup::Missing(epoch) = cache.lookup("juliet") else {
            panic!("stale entry kept");
        };
        cache.fill("juliet", epoch, Arc::new(list(&["romeo@montague.net"])));
        assert!(
            matches!(cache.lookup("juliet"), Lookup::Cached(l) if l.contains("romeo@montague.net"))
        );
    }
}
