//! XEP-0313 Message Archive Management (namespace `urn:xmpp:mam:2`, with the
//! `#extended` features of v0.7+), XEP-0431 full-text search, XEP-0059 result set
//! management for paging, and XEP-0441 archiving preferences — all over the
//! user's inbox log (DESIGN.md, "the inbox log"), whose XEP-0359 stanza ids are
//! the archive ids.
//!
//! * `<query/>` get: the query form (§4.1.5). Set: a query (§4); the results go
//!   to the client as messages (§4.2) queued before the `<fin/>` result.
//! * `<metadata/>` get: the archive's first and last entries (§5).
//! * `<prefs/>` get/set: XEP-0441 §2.1; [`should_archive`] applies them.
//!
//! Only the user's own archive is reachable (§8.1: another user's archive gets
//! `<forbidden/>`; the server itself keeps no archive).

use kith_proto::stream::{Limits, parse_fragment};
use kith_proto::{Element, Jid, StanzaError, ns};
use kith_store::{ArchiveDefault, ArchiveError, ArchivePage, ArchiveQuery, MamPrefs, Paging};

use super::roster::internal;
use super::{Request, Response};
use crate::Server;
use crate::datetime::format_datetime;
use crate::session::Session;

/// XEP-0313 namespace (queries, results, fin, metadata, prefs).
pub(crate) const NS: &str = "urn:xmpp:mam:2";
/// XEP-0313 §7: `before-id`/`after-id`/`ids`, flipped pages, metadata.
pub(crate) const NS_EXTENDED: &str = "urn:xmpp:mam:2#extended";
/// XEP-0431 §2.1 feature.
pub(crate) const NS_FULLTEXT: &str = "urn:xmpp:fulltext:0";
/// XEP-0059 Result Set Management.
const NS_RSM: &str = "http://jabber.org/protocol/rsm";
/// XEP-0297 Stanza Forwarding.
const NS_FORWARD: &str = "urn:xmpp:forward:0";
/// XEP-0122 Data Forms Validation.
const NS_XDATA_VALIDATE: &str = "http://jabber.org/protocol/xdata-validate";
/// XEP-0431 §3.1: the full-text field, in Clark notation (XEP-0068).
const FULLTEXT_FIELD: &str = "{urn:xmpp:fulltext:0}fulltext";

/// The most results one query returns; a larger RSM `<max/>` is capped (§4.3.1).
const MAX_PAGE: i64 = 250;
/// The page size when the client asks for none.
const DEFAULT_PAGE: i64 = 100;
/// The most ids an `ids` field may list.
const MAX_IDS: usize = 250;
/// The longest full-text search accepted, in bytes.
const MAX_FULLTEXT_BYTES: usize = 1024;
/// The most JIDs on one preference list.
const MAX_PREF_JIDS: usize = 1000;

/// Answers every request in the `urn:xmpp:mam:2` namespace.
pub(crate) async fn handle(session: &mut Session, request: &Request<'_>) -> Response {
    // XEP-0313 §8.1: no access to another user's archive.
    request.own_account_only()?;
    let payload = request.payload;
    match (payload.name.as_str(), request.set) {
        ("query", false) => Ok(Some(query_form())),
        ("query", true) => query(session, payload).await,
        ("metadata", false) => metadata(session).await,
        ("prefs", false) => get_prefs(session).await,
        ("prefs", true) => set_prefs(session, payload).await,
        _ => Err(StanzaError::bad_request()),
    }
}

/// Each user's XEP-0441 preferences, cached: they are read for every message
/// archived and change rarely. Only this node writes them through `set_prefs`.
#[derive(Default)]
pub(crate) struct PrefsCache {
    entries: std::sync::Mutex<std::collections::HashMap<String, Option<std::sync::Arc<MamPrefs>>>>,
}

/// Entries kept before the cache starts over.
const PREFS_CACHE_LIMIT: usize = 100_000;

impl PrefsCache {
    async fn get(&self, server: &Server, owner: &str) -> Option<std::sync::Arc<MamPrefs>> {
        if let Some(cached) = self.lock().get(owner) {
            return cached.clone();
        }
        let prefs = match server.store.mam_prefs(owner).await {
            Ok(prefs) => prefs.map(std::sync::Arc::new),
            Err(error) => {
                // Archive by default; don't cache a failure.
                tracing::error!(%error, owner, "reading archiving preferences failed");
                return None;
            }
        };
        let mut entries = self.lock();
        if entries.len() >= PREFS_CACHE_LIMIT {
            entries.clear();
        }
        entries.insert(owner.to_owned(), prefs.clone());
        prefs
    }

    pub(crate) fn forget(&self, owner: &str) {
        self.lock().remove(owner);
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<String, Option<std::sync::Arc<MamPrefs>>>,
    > {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Whether a message between `owner` (a username) and `peer` (the other party's
/// JID: the `from` of an incoming message, the `to` of an outgoing one) belongs in
/// the owner's archive under their XEP-0441 preferences. A JID on the "never"
/// list is never archived, even if it is also on the "always" list; JIDs on
/// neither follow the default (`roster`: only contacts in the owner's roster).
/// Without stored preferences, or when they cannot be read, everything is kept.
pub(crate) async fn should_archive(server: &Server, owner: &str, peer: &str) -> bool {
    let Some(prefs) = server.mam_prefs.get(server, owner).await else {
        return true;
    };
    let (full, bare) = match Jid::new(peer) {
        Ok(jid) => (jid.to_string(), jid.to_bare().to_string()),
        Err(_) => (peer.to_owned(), peer.to_owned()),
    };
    match archive_rule(&prefs, &full, &bare) {
        Some(keep) => keep,
        None => match server.store.roster_item(owner, &bare).await {
            Ok(item) => item.is_some(),
            Err(error) => {
                tracing::error!(%error, owner, "reading the roster for archiving failed");
                true
            }
        },
    }
}

/// XEP-0441 §2.3: the decision from the lists and the default, or `None` when it
/// depends on the roster. A listed bare JID matches any resource of it; a listed
/// full JID only itself.
fn archive_rule(prefs: &MamPrefs, full: &str, bare: &str) -> Option<bool> {
    let listed = |list: &[String]| {
        list.iter().any(|jid| {
            if jid.contains('/') {
                jid == full
            } else {
                jid == bare
            }
        })
    };
    if listed(&prefs.never) {
        return Some(false);
    }
    if listed(&prefs.always) {
        return Some(true);
    }
    match prefs.default {
        ArchiveDefault::Always => Some(true),
        ArchiveDefault::Never => Some(false),
        ArchiveDefault::Roster => None,
    }
}

// ----------------------------------------------------------------------
// queries
// ----------------------------------------------------------------------

/// A query as the client asked it, checked.
#[derive(Debug, PartialEq)]
pub(crate) struct ParsedQuery {
    pub(crate) query: ArchiveQuery,
    queryid: Option<String>,
    /// §4.3.4: send the page newest first.
    flip: bool,
}

/// §4: runs a query, queues one result message per item, answers with `<fin/>`.
async fn query(session: &mut Session, payload: &Element) -> Response {
    let parsed = parse_query(payload)?;
    let server = session.server.clone();
    let to = session.jid.to_string();
    let from = session.bare.to_string();
    let (results, fin) = run_query(&server, &session.username, &parsed, &to, &from).await?;
    for result in results {
        session.reply(result);
    }
    Ok(Some(fin))
}

/// Runs a parsed query on `owner`'s log (a user, or a room's archive): the result
/// messages (addressed `to` the requester, `from` the archive's JID) in the order
/// to send them, and the `<fin/>`.
pub(crate) async fn run_query(
    server: &Server,
    owner: &str,
    parsed: &ParsedQuery,
    to: &str,
    from: &str,
) -> Result<(Vec<Element>, Element), StanzaError> {
    let page = match server.store.archive_query(owner, &parsed.query).await {
        Ok(page) => page,
        // §4.1.3 / §4.3.2: an id not in the archive.
        Err(ArchiveError::UnknownId(_)) => return Err(StanzaError::item_not_found()),
        Err(ArchiveError::Store(error)) => return Err(internal(error)),
        Err(error) => {
            tracing::error!(%error, "archive query failed");
            return Err(StanzaError::internal());
        }
    };
    let queryid = parsed.queryid.as_deref();
    let mut results: Vec<Element> = page
        .items
        .iter()
        .map(|entry| result_message(to, from, queryid, entry))
        .collect();
    if parsed.flip {
        results.reverse();
    }
    Ok((results, fin(&page)))
}

/// Reads the `<query/>` of an archive query: the data form, RSM and flags.
pub(crate) fn parse_query(payload: &Element) -> Result<ParsedQuery, StanzaError> {
    if payload.get_attr("node").is_some() {
        // XEP-0442 pubsub archives: a user archive has no nodes.
        return Err(StanzaError::item_not_found());
    }
    let mut query = ArchiveQuery {
        max: DEFAULT_PAGE,
        ..ArchiveQuery::default()
    };
    let mut seen_form = false;
    let mut seen_set = false;
    let mut flip = false;
    for child in payload.elements() {
        if child.is("x", ns::DATA_FORMS) {
            if std::mem::replace(&mut seen_form, true) {
                return Err(bad_request("more than one data form"));
            }
            parse_form(child, &mut query)?;
        } else if child.is("set", NS_RSM) {
            if std::mem::replace(&mut seen_set, true) {
                return Err(bad_request("more than one result set"));
            }
            parse_rsm(child, &mut query)?;
        } else if child.is("flip-page", NS) {
            flip = true;
        }
    }
    Ok(ParsedQuery {
        query,
        queryid: payload.get_attr("queryid").map(str::to_owned),
        flip,
    })
}

/// §4.1: the XEP-0004 form of a query.
fn parse_form(form: &Element, query: &mut ArchiveQuery) -> Result<(), StanzaError> {
    if !matches!(form.get_attr("type"), None | Some("submit")) {
        return Err(bad_request("the query form must be of type 'submit'"));
    }
    let mut seen: Vec<&str> = Vec::new();
    for field in form.elements().filter(|e| e.is("field", ns::DATA_FORMS)) {
        let Some(var) = field.get_attr("var") else {
            return Err(bad_request("a form field without 'var'"));
        };
        if seen.contains(&var) {
            return Err(bad_request(format!("field '{var}' given twice")));
        }
        seen.push(var);
        let values: Vec<String> = field
            .elements()
            .filter(|e| e.is("value", ns::DATA_FORMS))
            .map(Element::text_content)
            .collect();
        match var {
            "FORM_TYPE" => {
                if single(var, &values)? != Some(NS) {
                    return Err(bad_request("FORM_TYPE must be urn:xmpp:mam:2"));
                }
            }
            "with" => {
                if let Some(value) = non_empty(single(var, &values)?) {
                    let jid = Jid::new(value.trim())
                        .map_err(|_| bad_request("'with' is not a valid JID"))?;
                    query.with = Some(match jid.resource() {
                        Some(_) => jid.to_string(),
                        None => jid.to_bare().to_string(),
                    });
                }
            }
            "start" | "end" => {
                if let Some(value) = non_empty(single(var, &values)?) {
                    let micros = parse_datetime(value.trim()).ok_or_else(|| {
                        bad_request(format!("'{var}' is not an XEP-0082 date-time"))
                    })?;
                    if var == "start" {
                        query.start_micros = Some(micros);
                    } else {
                        query.end_micros = Some(micros);
                    }
                }
            }
            "after-id" => query.after_id = non_empty(single(var, &values)?).map(str::to_owned),
            "before-id" => query.before_id = non_empty(single(var, &values)?).map(str::to_owned),
            "ids" => {
                if values.len() > MAX_IDS {
                    return Err(bad_request(format!("at most {MAX_IDS} ids per query")));
                }
                query.ids = values;
            }
            FULLTEXT_FIELD => {
                if let Some(text) = single(var, &values)? {
                    if text.len() > MAX_FULLTEXT_BYTES {
                        return Err(bad_request(format!(
                            "full-text search of more than {MAX_FULLTEXT_BYTES} bytes"
                        )));
                    }
                    // XEP-0431 §2.2: only a non-empty text searches.
                    if !text.trim().is_empty() {
                        query.fulltext = Some(text.to_owned());
                    }
                }
            }
            // §4.1.5: a field the server does not know.
            _ => {
                return Err(StanzaError::feature_not_implemented()
                    .with_text(format!("unknown query field '{var}'")));
            }
        }
    }
    Ok(())
}

/// XEP-0059 §2: page size and position.
fn parse_rsm(set: &Element, query: &mut ArchiveQuery) -> Result<(), StanzaError> {
    let mut after = None;
    let mut before = None;
    for child in set.elements().filter(|e| e.ns == NS_RSM) {
        match child.name.as_str() {
            "max" => query.max = parse_max(&child.text_content())?,
            "after" => {
                let id = child.text_content();
                if id.is_empty() {
                    return Err(bad_request("an empty <after/>"));
                }
                after = Some(id);
            }
            "before" => {
                let id = child.text_content();
                before = Some(if id.is_empty() { None } else { Some(id) });
            }
            // Paging by index (§2.6) is optional; kith pages by id only.
            "index" => {
                return Err(StanzaError::feature_not_implemented()
                    .with_text("paging by index is not supported"));
            }
            _ => {}
        }
    }
    query.paging = match (after, before) {
        // §4.3.2: RSM leaves <after/> with <before/> undefined; before-id and
        // after-id in the form express a range.
        (Some(_), Some(_)) => {
            return Err(bad_request("use after-id and before-id for a range"));
        }
        (Some(after), None) => Paging::After(Some(after)),
        (None, Some(before)) => Paging::Before(before),
        (None, None) => Paging::After(None),
    };
    Ok(())
}

/// `<max/>`: a non-negative integer; anything above [`MAX_PAGE`] (even beyond
/// 64 bits) is capped to it.
fn parse_max(text: &str) -> Result<i64, StanzaError> {
    let text = text.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad_request("<max/> must be a non-negative integer"));
    }
    Ok(text.parse::<i64>().unwrap_or(MAX_PAGE).min(MAX_PAGE))
}

/// The only value of a single-valued field, if any.
fn single<'a>(var: &str, values: &'a [String]) -> Result<Option<&'a str>, StanzaError> {
    match values {
        [] => Ok(None),
        [value] => Ok(Some(value.as_str())),
        _ => Err(bad_request(format!("field '{var}' takes one value"))),
    }
}

fn non_empty(value: Option<&str>) -> Option<&str> {
    value.filter(|v| !v.trim().is_empty())
}

fn bad_request(text: impl Into<String>) -> StanzaError {
    StanzaError::bad_request().with_text(text)
}

/// §4.2: one archived message, forwarded (XEP-0297) with its archive time.
fn result_message(
    to: &str,
    from: &str,
    queryid: Option<&str>,
    entry: &kith_store::InboxEntry,
) -> Element {
    let mut forwarded = Element::new(NS_FORWARD, "forwarded")
        .child(Element::new(ns::DELAY, "delay").attr("stamp", format_datetime(entry.at_micros)));
    match parse_fragment(entry.xml.as_bytes(), Limits::default()) {
        Ok(message) => forwarded.push_child(message),
        // §3.2 lets a result omit the message; its id, time and place stay.
        Err(error) => tracing::warn!(seq = entry.seq, %error, "archived message does not parse"),
    }
    Element::new(ns::CLIENT, "message")
        .attr("to", to)
        .attr("from", from)
        .attr("id", crate::random_id(16))
        .child(
            Element::new(NS, "result")
                .attr_opt("queryid", queryid)
                .attr("id", entry.stanza_id.clone())
                .child(forwarded),
        )
}

/// §4.3: the end of a query, with the RSM summary of the page.
fn fin(page: &ArchivePage) -> Element {
    let mut set = Element::new(NS_RSM, "set");
    if let (Some(first), Some(last)) = (&page.first, &page.last) {
        set.push_child(Element::new(NS_RSM, "first").text(first.clone()));
        set.push_child(Element::new(NS_RSM, "last").text(last.clone()));
    }
    if let Some(count) = page.count {
        set.push_child(Element::new(NS_RSM, "count").text(count.to_string()));
    }
    let fin = Element::new(NS, "fin");
    // §4.3.2: 'complete' is true on the last page, otherwise absent.
    let fin = if page.complete {
        fin.attr("complete", "true")
    } else {
        fin
    };
    fin.child(set)
}

/// §4.1.5: the fields a query may use.
pub(crate) fn query_form() -> Element {
    let field = |kind: &str, var: &str| {
        Element::new(ns::DATA_FORMS, "field")
            .attr("type", kind)
            .attr("var", var)
    };
    let form = Element::new(ns::DATA_FORMS, "x")
        .attr("type", "form")
        .child(field("hidden", "FORM_TYPE").child(Element::new(ns::DATA_FORMS, "value").text(NS)))
        .child(field("jid-single", "with"))
        .child(field("text-single", "start"))
        .child(field("text-single", "end"))
        .child(field("text-single", "before-id"))
        .child(field("text-single", "after-id"))
        .child(
            field("list-multi", "ids").child(
                Element::new(NS_XDATA_VALIDATE, "validate")
                    .attr("datatype", "xs:string")
                    .child(Element::new(NS_XDATA_VALIDATE, "open")),
            ),
        )
        .child(field("text-single", FULLTEXT_FIELD));
    Element::new(NS, "query").child(form)
}

/// §5: the first and last entries of the archive (none when it is empty).
async fn metadata(session: &mut Session) -> Response {
    metadata_of(&session.server, &session.username)
        .await
        .map(Some)
        .map_err(internal)
}

/// `username`'s archive metadata (§5), also what XEP-0386 §3.2 puts in `<bound/>`.
pub(crate) async fn metadata_of(
    server: &crate::Server,
    username: &str,
) -> Result<Element, kith_store::StoreError> {
    let bounds = server.store.archive_bounds(username).await?;
    let mut metadata = Element::new(NS, "metadata");
    if let Some(bounds) = bounds {
        for (name, mark) in [("start", bounds.first), ("end", bounds.last)] {
            metadata.push_child(
                Element::new(NS, name)
                    .attr("id", mark.id)
                    .attr("timestamp", format_datetime(mark.at_micros)),
            );
        }
    }
    Ok(metadata)
}

// ----------------------------------------------------------------------
// preferences (XEP-0441)
// ----------------------------------------------------------------------

/// What applies when a user has never set preferences: archive everything.
fn default_prefs() -> MamPrefs {
    MamPrefs {
        default: ArchiveDefault::Always,
        always: Vec::new(),
        never: Vec::new(),
    }
}

async fn get_prefs(session: &mut Session) -> Response {
    let prefs = session
        .server
        .store
        .mam_prefs(&session.username)
        .await
        .map_err(internal)?
        .unwrap_or_else(default_prefs);
    Ok(Some(prefs_element(&prefs)))
}

async fn set_prefs(session: &mut Session, payload: &Element) -> Response {
    let prefs = parse_prefs(payload)?;
    session
        .server
        .store
        .set_mam_prefs(&session.username, &prefs)
        .await
        .map_err(internal)?;
    session
        .server
        .forget(crate::cluster::CacheKind::MamPrefs, &session.username);
    // §2.1: the answer carries the preferences as applied.
    Ok(Some(prefs_element(&prefs)))
}

/// §2.1: `default` is required; `<always/>` and `<never/>` are optional lists.
fn parse_prefs(payload: &Element) -> Result<MamPrefs, StanzaError> {
    let default = payload
        .get_attr("default")
        .and_then(ArchiveDefault::parse)
        .ok_or_else(|| bad_request("'default' must be always, never or roster"))?;
    let list = |name: &str| -> Result<Vec<String>, StanzaError> {
        let mut jids: Vec<String> = Vec::new();
        for holder in payload.elements().filter(|e| e.is(name, NS)) {
            for jid in holder.elements().filter(|e| e.is("jid", NS)) {
                let jid = Jid::new(jid.text_content().trim())
                    .map_err(|_| StanzaError::jid_malformed())?
                    .to_string();
                if !jids.contains(&jid) {
                    jids.push(jid);
                }
            }
        }
        if jids.len() > MAX_PREF_JIDS {
            return Err(bad_request(format!(
                "at most {MAX_PREF_JIDS} JIDs per list"
            )));
        }
        Ok(jids)
    };
    Ok(MamPrefs {
        default,
        always: list("always")?,
        never: list("never")?,
    })
}

fn prefs_element(prefs: &MamPrefs) -> Element {
    let list = |name: &str, jids: &[String]| {
        let mut holder = Element::new(NS, name);
        for jid in jids {
            holder.push_child(Element::new(NS, "jid").text(jid.clone()));
        }
        holder
    };
    Element::new(NS, "prefs")
        .attr("default", prefs.default.as_str())
        .child(list("always", &prefs.always))
        .child(list("never", &prefs.never))
}

// ----------------------------------------------------------------------
// XEP-0082 date-times
// ----------------------------------------------------------------------

/// Parses an XEP-0082 DateTime, `CCYY-MM-DDThh:mm:ss[.s+](Z|±hh:mm)`, into unix
/// microseconds (digits of the fraction beyond microseconds are dropped; a leap
/// second `60` counts as `59.999999`).
fn parse_datetime(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = bytes.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let at = |index: usize, byte: u8| bytes.get(index) == Some(&byte);
    if !(at(4, b'-') && at(7, b'-') && at(10, b'T') && at(13, b':') && at(16, b':')) {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&month)
        || day < 1
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut index = 19;
    let mut micros = 0;
    if at(index, b'.') {
        index += 1;
        let start = index;
        while bytes.get(index).is_some_and(u8::is_ascii_digit) {
            index += 1;
        }
        let fraction = bytes.get(start..index)?;
        if fraction.is_empty() {
            return None;
        }
        for position in 0..6 {
            micros = micros * 10 + fraction.get(position).map_or(0, |d| i64::from(d - b'0'));
        }
    }
    let offset_secs = match bytes.get(index..)? {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let hours = digits(index + 1..index + 3)?;
            let minutes = digits(index + 4..index + 6)?;
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'+' { offset } else { -offset }
        }
        _ => return None,
    };
    let (second, micros) = if second == 60 {
        (59, 999_999)
    } else {
        (second, micros)
    };
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    Some(secs * 1_000_000 + micros)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`, the inverse of `datetime::civil_from_days`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(fields: &[(&str, &[&str])]) -> Element {
        let mut x = Element::new(ns::DATA_FORMS, "x").attr("type", "submit");
        for (var, values) in fields {
            let mut field = Element::new(ns::DATA_FORMS, "field").attr("var", *var);
            for value in *values {
                field.push_child(Element::new(ns::DATA_FORMS, "value").text(*value));
            }
            x.push_child(field);
        }
        x
    }

    fn query_with(children: Vec<Element>) -> Element {
        let mut query = Element::new(NS, "query").attr("queryid", "q1");
        for child in children {
            query.push_child(child);
        }
        query
    }

    fn rsm(children: &[(&str, &str)]) -> Element {
        let mut set = Element::new(NS_RSM, "set");
        for (name, text) in children {
            set.push_child(Element::new(NS_RSM, name).text(*text));
        }
        set
    }

    fn condition(result: Result<ParsedQuery, StanzaError>) -> &'static str {
        match result {
            Ok(_) => "ok",
            Err(error) => error.condition.as_str(),
        }
    }

    #[test]
    fn datetimes_parse_and_round_trip() {
        assert_eq!(parse_datetime("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_datetime("2000-02-29T12:34:56.789Z"),
            Some(951_827_696_789_000)
        );
        assert_eq!(
            parse_datetime("2000-02-29T14:34:56.789+02:00"),
            Some(951_827_696_789_000)
        );
        assert_eq!(
            parse_datetime("2000-02-29T10:04:56.789-02:30"),
            Some(951_827_696_789_000)
        );
        assert_eq!(
            parse_datetime("1970-01-01T00:00:00.123456789Z"),
            Some(123_456)
        );
        assert_eq!(parse_datetime("1969-12-31T23:59:59Z"), Some(-1_000_000));
        assert_eq!(
            parse_datetime("2016-12-31T23:59:60Z"),
            parse_datetime("2017-01-01T00:00:00Z").map(|t| t - 1)
        );
        for micros in [
            0,
            1_000,
            951_827_696_789_000,
            1_795_824_000_000_000,
            -86_400_000_000,
        ] {
            assert_eq!(parse_datetime(&format_datetime(micros)), Some(micros));
        }
        for bad in [
            "",
            "2000-02-30T00:00:00Z",
            "2001-02-29T00:00:00Z",
            "2000-13-01T00:00:00Z",
            "2000-01-01T24:00:00Z",
            "2000-01-01T00:60:00Z",
            "2000-01-01 00:00:00Z",
            "2000-01-01T00:00:00",
            "2000-01-01T00:00:00.Z",
            "2000-01-01T00:00:00+0200",
            "2000-01-01T00:00:00+24:00",
            "2000-01-01T00:00:00ZZ",
            "２０００-01-01T00:00:00Z",
            "+200-01-01T00:00:00Z",
            "2000-01-01",
        ] {
            assert_eq!(parse_datetime(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_full_form_parses() {
        let payload = query_with(vec![
            form(&[
                ("FORM_TYPE", &[NS]),
                ("with", &["Juliet@Capulet.lit"]),
                ("start", &["2010-06-07T00:00:00Z"]),
                ("end", &["2010-07-07T13:23:54Z"]),
                ("after-id", &["a"]),
                ("before-id", &["b"]),
                ("ids", &["x", "y"]),
                (FULLTEXT_FIELD, &["hello world"]),
            ]),
            rsm(&[("max", "10"), ("before", "")]),
            Element::new(NS, "flip-page"),
        ]);
        let parsed = parse_query(&payload).expect("parses");
        assert_eq!(parsed.queryid.as_deref(), Some("q1"));
        assert!(parsed.flip);
        let q = parsed.query;
        assert_eq!(q.with.as_deref(), Some("juliet@capulet.lit"));
        assert_eq!(q.start_micros, parse_datetime("2010-06-07T00:00:00Z"));
        assert_eq!(q.end_micros, parse_datetime("2010-07-07T13:23:54Z"));
        assert_eq!(q.after_id.as_deref(), Some("a"));
        assert_eq!(q.before_id.as_deref(), Some("b"));
        assert_eq!(q.ids, ["x", "y"]);
        assert_eq!(q.fulltext.as_deref(), Some("hello world"));
        assert_eq!(q.max, 10);
        assert_eq!(q.paging, Paging::Before(None));
    }

    #[test]
    fn with_keeps_a_resource() {
        let payload = query_with(vec![form(&[("with", &["romeo@montague.lit/orchard"])])]);
        let parsed = parse_query(&payload).expect("parses");
        assert_eq!(
            parsed.query.with.as_deref(),
            Some("romeo@montague.lit/orchard")
        );
    }

    #[test]
    fn an_empty_query_is_the_first_default_page() {
        let parsed = parse_query(&Element::new(NS, "query")).expect("parses");
        assert_eq!(parsed.query.max, DEFAULT_PAGE);
        assert_eq!(parsed.query.paging, Paging::After(None));
        assert_eq!(parsed.queryid, None);
        assert!(!parsed.flip);
        // Empty values and an empty full-text search filter nothing.
        let payload = query_with(vec![form(&[
            ("with", &[]),
            ("start", &[""]),
            (FULLTEXT_FIELD, &["   "]),
        ])]);
        let parsed = parse_query(&payload).expect("parses");
        assert_eq!(parsed.query.with, None);
        assert_eq!(parsed.query.start_micros, None);
        assert_eq!(parsed.query.fulltext, None);
    }

    #[test]
    fn max_is_capped_and_checked() {
        let max = |text: &str| parse_max(text).map_err(|e| e.condition.as_str());
        assert_eq!(max("0"), Ok(0));
        assert_eq!(max(" 10 "), Ok(10));
        assert_eq!(max("250"), Ok(MAX_PAGE));
        assert_eq!(max("100000"), Ok(MAX_PAGE));
        assert_eq!(max("99999999999999999999999999"), Ok(MAX_PAGE));
        for bad in ["-1", "", "ten", "1.5", "+3", "0x10", "１０"] {
            assert_eq!(max(bad), Err("bad-request"), "{bad:?}");
        }
    }

    #[test]
    fn malformed_queries_are_refused() {
        let cases: Vec<(Element, &str)> = vec![
            (
                query_with(vec![form(&[("FORM_TYPE", &["urn:xmpp:mam:1"])])]),
                "bad-request",
            ),
            (
                query_with(vec![form(&[("with", &["a@b", "c@d"])])]),
                "bad-request",
            ),
            (
                query_with(vec![form(&[("with", &["@bad@"])])]),
                "bad-request",
            ),
            (
                query_with(vec![form(&[("start", &["yesterday"])])]),
                "bad-request",
            ),
            (
                query_with(vec![form(&[("end", &["2010-02-30T00:00:00Z"])])]),
                "bad-request",
            ),
            (
                query_with(vec![form(&[("after-id", &["a"]), ("after-id", &["b"])])]),
                "bad-request",
            ),
            (
                query_with(vec![form(&[("include-groupchat", &["true"])])]),
                "feature-not-implemented",
            ),
            (
                query_with(vec![form(&[("{urn:example}x", &["1"])])]),
                "feature-not-implemented",
            ),
            (
                query_with(vec![Element::new(ns::DATA_FORMS, "x").attr("type", "form")]),
                "bad-request",
            ),
            (
                query_with(vec![
                    Element::new(ns::DATA_FORMS, "x").child(Element::new(ns::DATA_FORMS, "field")),
                ]),
                "bad-request",
            ),
            (query_with(vec![form(&[]), form(&[])]), "bad-request"),
            (query_with(vec![rsm(&[("max", "-1")])]), "bad-request"),
            (query_with(vec![rsm(&[("max", "lots")])]), "bad-request"),
            (query_with(vec![rsm(&[("after", "")])]), "bad-request"),
            (
                query_with(vec![rsm(&[("after", "a"), ("before", "b")])]),
                "bad-request",
            ),
            (
                query_with(vec![rsm(&[("index", "3")])]),
                "feature-not-implemented",
            ),
            (
                Element::new(NS, "query").attr("node", "urn:xmpp:mucsub:nodes:messages"),
                "item-not-found",
            ),
        ];
        for (payload, expected) in cases {
            let xml = payload.to_xml(ns::CLIENT);
            assert_eq!(condition(parse_query(&payload)), expected, "{xml}");
        }
        let ids: Vec<String> = (0..=MAX_IDS).map(|i| i.to_string()).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let too_many = query_with(vec![form(&[("ids", &ids)])]);
        assert_eq!(condition(parse_query(&too_many)), "bad-request");
        let long = "a".repeat(MAX_FULLTEXT_BYTES + 1);
        let too_long = query_with(vec![form(&[(FULLTEXT_FIELD, &[long.as_str()])])]);
        assert_eq!(condition(parse_query(&too_long)), "bad-request");
    }

    #[test]
    fn rsm_positions() {
        let paging = |set: Element| parse_query(&query_with(vec![set])).map(|p| p.query.paging);
        assert_eq!(
            paging(rsm(&[("after", "x")])),
            Ok(Paging::After(Some("x".into())))
        );
        assert_eq!(
            paging(rsm(&[("before", "x")])),
            Ok(Paging::Before(Some("x".into())))
        );
        assert_eq!(paging(rsm(&[("before", "")])), Ok(Paging::Before(None)));
        assert_eq!(paging(rsm(&[])), Ok(Paging::After(None)));
    }

    #[test]
    fn fin_reports_the_page() {
        let page = ArchivePage {
            items: Vec::new(),
            complete: true,
            first: Some("f".into()),
            last: Some("l".into()),
            count: Some(7),
        };
        assert_eq!(
            fin(&page).to_xml(ns::CLIENT),
            "<fin xmlns='urn:xmpp:mam:2' complete='true'>\
             <set xmlns='http://jabber.org/protocol/rsm'>\
             <first>f</first><last>l</last><count>7</count></set></fin>"
        );
        let empty = ArchivePage {
            items: Vec::new(),
            complete: false,
            first: None,
            last: None,
            count: Some(0),
        };
        assert_eq!(
            fin(&empty).to_xml(ns::CLIENT),
            "<fin xmlns='urn:xmpp:mam:2'>\
             <set xmlns='http://jabber.org/protocol/rsm'><count>0</count></set></fin>"
        );
    }

    #[test]
    fn results_forward_the_stored_message() {
        let entry = kith_store::InboxEntry {
            seq: 3,
            stanza_id: "sid-1".into(),
            sender: "romeo@montague.lit/orchard".into(),
            kind: "message".into(),
            xml: "<message xmlns='jabber:client' from='romeo@montague.lit/orchard' \
                  to='juliet@capulet.lit' type='chat'><body>Hi &amp; bye</body></message>"
                .into(),
            at_micros: 1_278_803_305_000_000,
            peer: "romeo@montague.lit".into(),
            direction: "in".into(),
            body: Some("Hi & bye".into()),
        };
        let result = result_message(
            "juliet@capulet.lit/balcony",
            "juliet@capulet.lit",
            Some("q1"),
            &entry,
        );
        let inner = result.get_child("result", NS).expect("result");
        assert_eq!(inner.get_attr("id"), Some("sid-1"));
        assert_eq!(inner.get_attr("queryid"), Some("q1"));
        let forwarded = inner.get_child("forwarded", NS_FORWARD).expect("forwarded");
        assert_eq!(
            forwarded
                .get_child("delay", ns::DELAY)
                .and_then(|d| d.get_attr("stamp")),
            Some("2010-07-10T23:08:25.000Z")
        );
        let message = forwarded.get_child("message", ns::CLIENT).expect("message");
        assert_eq!(
            message.child_text("body", ns::CLIENT).as_deref(),
            Some("Hi & bye")
        );
        assert_eq!(result.get_attr("to"), Some("juliet@capulet.lit/balcony"));

        // A stored message that does not parse still yields its result.
        let broken = kith_store::InboxEntry {
            xml: "<message".into(),
            ..entry
        };
        let result = result_message("a@b/c", "a@b", None, &broken);
        let forwarded = result
            .get_child("result", NS)
            .and_then(|r| r.get_child("forwarded", NS_FORWARD))
            .expect("forwarded");
        assert!(forwarded.get_child("message", ns::CLIENT).is_none());
    }

    #[test]
    fn the_form_names_every_field() {
        let form = query_form();
        let vars: Vec<&str> = form
            .get_child("x", ns::DATA_FORMS)
            .map(|x| x.elements().filter_map(|f| f.get_attr("var")).collect())
            .unwrap_or_default();
        assert_eq!(
            vars,
            [
                "FORM_TYPE",
                "with",
                "start",
                "end",
                "before-id",
                "after-id",
                "ids",
                FULLTEXT_FIELD
            ]
        );
        // Every advertised field is accepted back.
        for var in &vars[1..] {
            let value = match *var {
                "with" => "a@b.c",
                "start" | "end" => "2020-01-01T00:00:00Z",
                _ => "x",
            };
            let payload = query_with(vec![form_with(var, value)]);
            assert_eq!(condition(parse_query(&payload)), "ok", "{var}");
        }
    }

    fn form_with(var: &str, value: &str) -> Element {
        form(&[(var, &[value])])
    }

    #[test]
    fn prefs_parse_and_serialise() {
        let payload = Element::new(NS, "prefs")
            .attr("default", "roster")
            .child(
                Element::new(NS, "always")
                    .child(Element::new(NS, "jid").text("Romeo@Montague.lit"))
                    .child(Element::new(NS, "jid").text("romeo@montague.lit")),
            )
            .child(
                Element::new(NS, "never")
                    .child(Element::new(NS, "jid").text("nurse@capulet.lit/chamber")),
            );
        let prefs = parse_prefs(&payload).expect("parses");
        assert_eq!(prefs.default, ArchiveDefault::Roster);
        assert_eq!(prefs.always, ["romeo@montague.lit"]);
        assert_eq!(prefs.never, ["nurse@capulet.lit/chamber"]);
        assert_eq!(
            prefs_element(&prefs).to_xml(ns::CLIENT),
            "<prefs xmlns='urn:xmpp:mam:2' default='roster'>\
             <always><jid>romeo@montague.lit</jid></always>\
             <never><jid>nurse@capulet.lit/chamber</jid></never></prefs>"
        );
        assert_eq!(
            prefs_element(&default_prefs()).to_xml(ns::CLIENT),
            "<prefs xmlns='urn:xmpp:mam:2' default='always'><always/><never/></prefs>"
        );
        for bad in [
            Element::new(NS, "prefs"),
            Element::new(NS, "prefs").attr("default", "sometimes"),
        ] {
            assert_eq!(
                parse_prefs(&bad).map_err(|e| e.condition.as_str()),
                Err("bad-request")
            );
        }
        let bad_jid = Element::new(NS, "prefs")
            .attr("default", "always")
            .child(Element::new(NS, "never").child(Element::new(NS, "jid").text("@@")));
        assert_eq!(
            parse_prefs(&bad_jid).map_err(|e| e.condition.as_str()),
            Err("jid-malformed")
        );
    }

    #[test]
    fn archive_rules_follow_the_lists_then_the_default() {
        let prefs = MamPrefs {
            default: ArchiveDefault::Roster,
            always: vec![
                "romeo@montague.lit".into(),
                "nurse@capulet.lit/chamber".into(),
            ],
            never: vec!["tybalt@capulet.lit".into(), "romeo@montague.lit".into()],
        };
        let rule = |full: &str, bare: &str| archive_rule(&prefs, full, bare);
        // "never" wins over "always".
        assert_eq!(
            rule("romeo@montague.lit/orchard", "romeo@montague.lit"),
            Some(false)
        );
        assert_eq!(
            rule("tybalt@capulet.lit/x", "tybalt@capulet.lit"),
            Some(false)
        );
        // A listed full JID matches only that resource.
        assert_eq!(
            rule("nurse@capulet.lit/chamber", "nurse@capulet.lit"),
            Some(true)
        );
        assert_eq!(rule("nurse@capulet.lit/garden", "nurse@capulet.lit"), None);
        let always = MamPrefs {
            default: ArchiveDefault::Always,
            ..prefs.clone()
        };
        assert_eq!(archive_rule(&always, "x@y/z", "x@y"), Some(true));
        let never = MamPrefs {
            default: ArchiveDefault::Never,
            ..prefs
        };
        assert_eq!(archive_rule(&never, "x@y/z", "x@y"), Some(false));
    }
}
