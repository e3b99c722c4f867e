//! XEP-0115 entity capabilities of *clients*, as PEP needs them: which
//! `NODE+notify` features each connected resource has (XEP-0163 §4.2,
//! "filtered notifications").
//!
//! A resource's available presence carries `<c hash node ver/>`. When `ver` is
//! new, the server asks that resource for disco#info on `node#ver` (§6.2), one
//! query per unknown `ver` however many resources announce it, and checks the
//! answer against `ver` (§5.4: the verification string is recomputed with the
//! named hash, §5.1) before caching it for everyone. An answer that does not
//! verify (or legacy caps without `hash`) is believed only for the resource that
//! gave it.
//!
//! Architecture Invariant: locks here are plain mutexes held only to read or
//! change the maps, never across an `await`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use kith_proto::{Element, FullJid, ns};

/// A resource's features.
pub(crate) type Features = Arc<HashSet<String>>;

/// How long an unanswered caps query blocks asking again for the same `ver`.
const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The caps a presence announces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Announced {
    /// `hash` (absent for legacy caps).
    pub hash: Option<String>,
    pub node: String,
    pub ver: String,
}

impl Announced {
    /// The `<c/>` of a presence, if it has one.
    pub fn of(presence: &Element) -> Option<Announced> {
        let c = presence.get_child("c", ns::CAPS)?;
        Some(Announced {
            hash: c.get_attr("hash").map(str::to_owned),
            node: c.get_attr("node")?.to_owned(),
            ver: c.get_attr("ver")?.to_owned(),
        })
    }

    /// The key of a verifiable announcement in the shared cache.
    fn key(&self) -> Option<String> {
        let hash = self.hash.as_deref()?;
        supported_hash(hash).then(|| format!("{hash} {}", self.ver))
    }
}

struct Pending {
    jid: String,
    announced: Announced,
}

#[derive(Default)]
struct Inner {
    /// Verified feature sets by `hash ver`.
    known: HashMap<String, Features>,
    /// Unverifiable feature sets by full JID and `ver`.
    by_jid: HashMap<(String, String), Features>,
    /// Our disco#info queries in flight, by IQ id.
    pending: HashMap<String, Pending>,
    /// Per `hash ver` (or full JID for unverifiable caps): when it was asked and
    /// which resources wait for the answer.
    waiting: HashMap<String, (Instant, Vec<String>)>,
}

/// The shared cache, one per server.
pub(crate) struct Caps {
    inner: Mutex<Inner>,
    capacity: usize,
}

/// What to do about a resource's announced caps.
pub(crate) enum Lookup {
    /// Its features are known.
    Known(Features),
    /// Ask it with this IQ (to send to the resource).
    Ask(Element),
    /// A query for the same `ver` is in flight; the resource is queued.
    Waiting,
}

/// What an answer to one of our queries resolved.
pub(crate) struct Resolved {
    pub features: Features,
    /// The resources that waited for it, as full JIDs.
    pub jids: Vec<String>,
}

impl Caps {
    pub fn new(capacity: usize) -> Caps {
        Caps {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The features of `jid` as far as they are known, without asking.
    pub fn features(&self, jid: &str, announced: &Announced) -> Option<Features> {
        let inner = self.lock();
        match announced.key() {
            Some(key) if inner.known.contains_key(&key) => inner.known.get(&key).cloned(),
            _ => inner
                .by_jid
                .get(&(jid.to_owned(), announced.ver.clone()))
                .cloned(),
        }
    }

    /// Looks up `jid`'s caps, deciding whether to ask it (from `domain`).
    pub fn lookup(&self, jid: &FullJid, announced: &Announced, domain: &str) -> Lookup {
        let full = jid.to_string();
        if let Some(features) = self.features(&full, announced) {
            return Lookup::Known(features);
        }
        let wait_key = announced.key().unwrap_or_else(|| full.clone());
        let mut inner = self.lock();
        if let Some((asked, jids)) = inner.waiting.get_mut(&wait_key)
            && asked.elapsed() < QUERY_TIMEOUT
        {
            if !jids.contains(&full) {
                jids.push(full);
            }
            return Lookup::Waiting;
        }
        if inner.pending.len() >= self.capacity {
            // Clients that never answer must not grow this without bound.
            inner.pending.clear();
            inner.waiting.clear();
        }
        let id = format!("caps-{}", crate::random_id(16));
        inner.pending.insert(
            id.clone(),
            Pending {
                jid: full.clone(),
                announced: announced.clone(),
            },
        );
        inner
            .waiting
            .insert(wait_key, (Instant::now(), vec![full.clone()]));
        let query = Element::new(ns::DISCO_INFO, "query")
            .attr("node", format!("{}#{}", announced.node, announced.ver));
        Lookup::Ask(
            Element::new(ns::CLIENT, "iq")
                .attr("type", "get")
                .attr("id", id)
                .attr("from", domain)
                .attr("to", full)
                .child(query),
        )
    }

    /// Takes an IQ result or error from `from` if it answers one of our queries.
    /// `None`: not ours. `Some(None)`: ours, but nothing learned.
    pub fn answer(&self, from: &FullJid, iq: &Element) -> Option<Option<Resolved>> {
        let id = iq.get_attr("id")?;
        let mut inner = self.lock();
        let pending = inner.pending.get(id)?;
        let full = from.to_string();
        if pending.jid != full {
            // Someone else's reply with our id: not an answer.
            return None;
        }
        let pending = inner.pending.remove(id)?;
        let announced = pending.announced;
        let wait_key = announced.key().unwrap_or_else(|| full.clone());
        let jids = inner
            .waiting
            .remove(&wait_key)
            .map(|(_, jids)| jids)
            .unwrap_or_default();
        let query = (iq.get_attr("type") == Some("result"))
            .then(|| iq.get_child("query", ns::DISCO_INFO))
            .flatten()?;
        let features: Features = Arc::new(
            query
                .elements()
                .filter(|e| e.is("feature", ns::DISCO_INFO))
                .filter_map(|e| e.get_attr("var"))
                .map(str::to_owned)
                .collect(),
        );
        let computed = announced
            .hash
            .as_deref()
            .and_then(|hash| verification_string(hash, query));
        let verified = computed.as_deref() == Some(announced.ver.as_str());
        if inner.known.len() + inner.by_jid.len() >= self.capacity {
            inner.known.clear();
            inner.by_jid.clear();
        }
        let jids = match announced.key() {
            Some(key) if verified => {
                inner.known.insert(key, features.clone());
                jids
            }
            _ => {
                if announced.hash.is_some() {
                    tracing::debug!(
                        jid = %full,
                        announced = %announced.ver,
                        computed = ?computed,
                        "caps hash does not verify; used for this resource only"
                    );
                }
                inner
                    .by_jid
                    .insert((full.clone(), announced.ver.clone()), features.clone());
                vec![full]
            }
        };
        Some(Some(Resolved { features, jids }))
    }
}

fn supported_hash(hash: &str) -> bool {
    matches!(hash, "sha-1" | "sha-256")
}

/// XEP-0115 §5.1: the verification string of a disco#info answer, hashed with
/// `hash` and base64-encoded. `None` for a hash we do not implement or an answer
/// that §5.4 says to reject (duplicate identities, features or form types).
pub(crate) fn verification_string(hash: &str, query: &Element) -> Option<String> {
    let mut identities: Vec<String> = query
        .elements()
        .filter(|e| e.is("identity", ns::DISCO_INFO))
        .map(|e| {
            format!(
                "{}/{}/{}/{}",
                e.get_attr("category").unwrap_or(""),
                e.get_attr("type").unwrap_or(""),
                e.get_attr("xml:lang").unwrap_or(""),
                e.get_attr("name").unwrap_or("")
            )
        })
        .collect();
    let mut features: Vec<&str> = query
        .elements()
        .filter(|e| e.is("feature", ns::DISCO_INFO))
        .filter_map(|e| e.get_attr("var"))
        .collect();
    identities.sort_unstable();
    features.sort_unstable();
    let unique = |count: usize, mut deduped: Vec<String>| {
        deduped.dedup();
        deduped.len() == count
    };
    // §5.4 step 3: duplicates make the answer invalid.
    if !unique(identities.len(), identities.clone())
        || !unique(
            features.len(),
            features.iter().map(|f| (*f).to_owned()).collect(),
        )
    {
        return None;
    }
    let mut input = String::new();
    for identity in &identities {
        input.push_str(identity);
        input.push('<');
    }
    for feature in &features {
        input.push_str(feature);
        input.push('<');
    }
    // Extended information (XEP-0128 forms), sorted by FORM_TYPE; fields by var,
    // values sorted (§5.1 step 7).
    let mut forms = Vec::new();
    for form in query.elements().filter(|e| e.is("x", ns::DATA_FORMS)) {
        let mut form_type = None;
        let mut fields = Vec::new();
        for field in form.elements().filter(|e| e.is("field", ns::DATA_FORMS)) {
            let var = field.get_attr("var").unwrap_or("").to_owned();
            let mut values: Vec<String> = field
                .elements()
                .filter(|e| e.is("value", ns::DATA_FORMS))
                .map(Element::text_content)
                .collect();
            if var == "FORM_TYPE" {
                form_type = values.first().cloned();
                continue;
            }
            values.sort_unstable();
            fields.push((var, values));
        }
        // A form without FORM_TYPE is ignored (§5.4 step 3.6).
        let Some(form_type) = form_type else { continue };
        fields.sort_unstable();
        forms.push((form_type, fields));
    }
    forms.sort_unstable();
    let types: Vec<String> = forms.iter().map(|f| f.0.clone()).collect();
    if !unique(types.len(), types) {
        return None;
    }
    for (form_type, fields) in forms {
        input.push_str(&form_type);
        input.push('<');
        for (var, values) in fields {
            input.push_str(&var);
            input.push('<');
            for value in values {
                input.push_str(&value);
                input.push('<');
            }
        }
    }
    let digest = match hash {
        "sha-1" => {
            use sha1::{Digest, Sha1};
            Sha1::digest(input.as_bytes()).to_vec()
        }
        "sha-256" => {
            use sha2::{Digest, Sha256};
            Sha256::digest(input.as_bytes()).to_vec()
        }
        _ => return None,
    };
    Some(base64::engine::general_purpose::STANDARD.encode(digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feature(var: &str) -> Element {
        Element::new(ns::DISCO_INFO, "feature").attr("var", var)
    }

    /// XEP-0115 §5.2, the simple example.
    #[test]
    fn simple_example_verifies() {
        let query = Element::new(ns::DISCO_INFO, "query")
            .child(
                Element::new(ns::DISCO_INFO, "identity")
                    .attr("category", "client")
                    .attr("type", "pc")
                    .attr("name", "Exodus 0.9.1"),
            )
            .child(feature("http://jabber.org/protocol/muc"))
            .child(feature("http://jabber.org/protocol/disco#info"))
            .child(feature("http://jabber.org/protocol/disco#items"))
            .child(feature("http://jabber.org/protocol/caps"));
        assert_eq!(
            verification_string("sha-1", &query).as_deref(),
            Some("QgayPKawpkPSDYmwT/WM94uAlu0=")
        );
        let duplicated = query
            .clone()
            .child(feature("http://jabber.org/protocol/muc"));
        assert_eq!(verification_string("sha-1", &duplicated), None);
        assert_eq!(verification_string("md5", &query), None);
    }

    /// XEP-0115 §5.3, the complex example (identities in two languages and an
    /// extended form).
    #[test]
    fn complex_example_verifies() {
        let identity = |lang: &str, name: &str| {
            Element::new(ns::DISCO_INFO, "identity")
                .attr("xml:lang", lang)
                .attr("category", "client")
                .attr("name", name)
                .attr("type", "pc")
        };
        let field = |var: &str, values: &[&str]| {
            let mut f = Element::new(ns::DATA_FORMS, "field").attr("var", var);
            for v in values {
                f.push_child(Element::new(ns::DATA_FORMS, "value").text(*v));
            }
            f
        };
        let form = Element::new(ns::DATA_FORMS, "x")
            .attr("type", "result")
            .child(field("FORM_TYPE", &["urn:xmpp:dataforms:softwareinfo"]))
            .child(field("ip_version", &["ipv4", "ipv6"]))
            .child(field("os", &["Mac"]))
            .child(field("os_version", &["10.5.1"]))
            .child(field("software", &["Psi"]))
            .child(field("software_version", &["0.11"]));
        let query = Element::new(ns::DISCO_INFO, "query")
            .child(identity("en", "Psi 0.11"))
            .child(identity("el", "Ψ 0.11"))
            .child(feature("http://jabber.org/protocol/caps"))
            .child(feature("http://jabber.org/protocol/disco#info"))
            .child(feature("http://jabber.org/protocol/disco#items"))
            .child(feature("http://jabber.org/protocol/muc"))
            .child(form);
        assert_eq!(
            verification_string("sha-1", &query).as_deref(),
            Some("q07IKJEyjvHSyhy//CH0CxmKi8w=")
        );
    }

    fn presence_with(ver: &str) -> Element {
        Element::new(ns::CLIENT, "presence").child(
            Element::new(ns::CAPS, "c")
                .attr("hash", "sha-1")
                .attr("node", "https://client.example")
                .attr("ver", ver),
        )
    }

    #[test]
    fn one_query_per_ver_and_only_verified_answers_are_shared() {
        let caps = Caps::new(100);
        let a = FullJid::new("a@localhost/1").unwrap();
        let b = FullJid::new("b@localhost/2").unwrap();
        let query =
            Element::new(ns::DISCO_INFO, "query").child(feature("urn:xmpp:avatar:metadata+notify"));
        let ver = verification_string("sha-1", &query).unwrap();
        let announced = Announced::of(&presence_with(&ver)).unwrap();
        let Lookup::Ask(iq) = caps.lookup(&a, &announced, "localhost") else {
            panic!("the first resource is asked");
        };
        assert!(matches!(
            caps.lookup(&b, &announced, "localhost"),
            Lookup::Waiting
        ));
        // An answer from someone else is not taken.
        let mut result = Element::new(ns::CLIENT, "iq")
            .attr("type", "result")
            .attr("id", iq.get_attr("id").unwrap())
            .child(query);
        assert!(caps.answer(&b, &result).is_none());
        let resolved = caps.answer(&a, &result).unwrap().unwrap();
        assert_eq!(resolved.jids, ["a@localhost/1", "b@localhost/2"]);
        assert!(
            resolved
                .features
                .contains("urn:xmpp:avatar:metadata+notify")
        );
        assert!(matches!(
            caps.lookup(&b, &announced, "localhost"),
            Lookup::Known(_)
        ));

        // A forged answer: believed for that resource only.
        let forged = Announced::of(&presence_with("AAAAAAAAAAAAAAAAAAAAAAAAAAA=")).unwrap();
        let Lookup::Ask(iq) = caps.lookup(&a, &forged, "localhost") else {
            panic!("unknown ver is asked");
        };
        result.set_attr("id", iq.get_attr("id").unwrap());
        let resolved = caps.answer(&a, &result).unwrap().unwrap();
        assert_eq!(resolved.jids, ["a@localhost/1"]);
        assert!(caps.features("a@localhost/1", &forged).is_some());
        assert!(caps.features("b@localhost/2", &forged).is_none());
    }
}
