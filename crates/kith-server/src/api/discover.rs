//! `POST /contacts/discover`: which numbers of a user's address book have
//! accounts, with their JIDs. National-format numbers are read in the caller's
//! own country. Each request is capped (`discover_max_per_request`) and so is
//! each account's day (`discover_max_per_day`), against enumeration.
//!
//! When two users have each other's number (both looked the other up), each is
//! put on the other's roster with subscription `both`, as WhatsApp shows contacts
//! without a request step; online resources get the RFC 6121 §2.1.6 roster push
//! and each other's presence.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use kith_proto::BareJid;
use kith_proto::error::StanzaErrorCondition;
use kith_store::{RosterItem, Subscription};
use serde::Deserialize;

use super::{ApiError, ApiJson, Device, json, phone};
use crate::Server;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DiscoverRequest {
    phones: Vec<String>,
}

const DAY_SECS: i64 = 86_400;

pub(crate) async fn discover(
    State(server): State<Arc<Server>>,
    device: Device,
    ApiJson(request): ApiJson<DiscoverRequest>,
) -> Result<Response, ApiError> {
    let config = &server.config.phone;
    if request.phones.len() > config.discover_max_per_request {
        return Err(ApiError::bad_request(
            "too_many_numbers",
            format!(
                "at most {} numbers per request",
                config.discover_max_per_request
            ),
        ));
    }
    let now_secs = crate::now_micros() / 1_000_000;
    let day = now_secs / DAY_SECS;
    let count = i64::try_from(request.phones.len()).unwrap_or(i64::MAX);
    if !server
        .store
        .take_discovery_quota(&device.owner, day, count, config.discover_max_per_day)
        .await?
    {
        let wait = (day + 1) * DAY_SECS - now_secs;
        return Err(ApiError::too_many(
            "daily_limit",
            "this account has looked up as many numbers as allowed today",
            Duration::from_secs(u64::try_from(wait).unwrap_or(0)),
        ));
    }
    let own_phone = server.store.phone_of(&device.owner).await?;
    let region = own_phone.as_deref().and_then(phone::region_of);
    let mut invalid = Vec::new();
    let mut parsed = Vec::new();
    for input in &request.phones {
        match phone::normalize(input, region) {
            Some(number) => parsed.push((input.clone(), number.as_str().to_owned())),
            None => invalid.push(input.clone()),
        }
    }
    let mut numbers: Vec<String> = parsed.iter().map(|(_, e164)| e164.clone()).collect();
    numbers.sort();
    numbers.dedup();
    let found = server.store.phone_accounts(&numbers).await?;
    let others: Vec<&(String, String)> = found
        .iter()
        .filter(|(_, username)| *username != device.owner)
        .collect();
    let found_phones: Vec<String> = others.iter().map(|(phone, _)| phone.clone()).collect();
    server
        .store
        .record_discovered(&device.owner, &found_phones)
        .await?;
    if let Some(own_phone) = &own_phone {
        for (_, contact) in &others {
            if server.store.has_discovered(contact, own_phone).await? {
                befriend(&server, &device.owner, contact).await?;
            }
        }
    }
    let contacts: Vec<serde_json::Value> = parsed
        .iter()
        .filter_map(|(input, e164)| {
            let (_, username) = found.iter().find(|(phone, _)| phone == e164)?;
            Some(serde_json::json!({
                "phone": input,
                "e164": e164,
                "jid": super::jid_of(&server, username),
            }))
        })
        .collect();
    Ok(json(
        StatusCode::OK,
        serde_json::json!({ "contacts": contacts, "invalid": invalid }),
    ))
}

/// Puts back what `owner` held for `contact` before [`befriend`] changed it.
async fn undo(
    server: &Arc<Server>,
    owner: &str,
    owner_jid: &BareJid,
    contact: &BareJid,
    before: Option<RosterItem>,
) -> Result<(), ApiError> {
    let failed = |_| ApiError::internal("restoring a roster item");
    match before {
        // A change to a row that is there: never refused for room.
        Some(item) => crate::features::roster::save_and_push(server, owner_jid, owner, &item)
            .await
            .map_err(failed),
        None => {
            if let Some(version) = server
                .store
                .remove_roster_item(owner, contact.as_str())
                .await?
            {
                let removed = kith_proto::Element::new(kith_proto::ns::ROSTER, "item")
                    .attr("jid", contact.to_string())
                    .attr("subscription", "remove");
                crate::features::roster::push(server, owner_jid, removed, version);
            }
            Ok(())
        }
    }
}

/// Puts `a` and `b` on each other's roster with subscription `both` (unless they
/// already are), pushes the change and exchanges current presence.
async fn befriend(server: &Arc<Server>, a: &str, b: &str) -> Result<(), ApiError> {
    let jid =
        |username: &str| BareJid::new(&super::jid_of(server, username)).map_err(ApiError::internal);
    let (a_jid, b_jid) = (jid(a)?, jid(b)?);
    // Blocked contacts are left alone (XEP-0191: nothing goes to or from them).
    if server.store.is_blocked(a, b_jid.as_str()).await?
        || server.store.is_blocked(b, a_jid.as_str()).await?
    {
        return Ok(());
    }
    let mut changed = false;
    // What the first side held before, to put back if the second side's
    // roster has no room: the pair is made whole or not at all.
    let mut first: Option<(&str, &BareJid, &BareJid, Option<RosterItem>)> = None;
    for (owner, owner_jid, contact_jid) in [(a, &a_jid, &b_jid), (b, &b_jid, &a_jid)] {
        let existing = server
            .store
            .roster_item(owner, contact_jid.as_str())
            .await?;
        if existing
            .as_ref()
            .is_some_and(|item| item.subscription == Subscription::Both)
        {
            continue;
        }
        let item = RosterItem {
            contact: contact_jid.as_str().to_owned(),
            subscription: Subscription::Both,
            ask: false,
            pending_in: false,
            approved: false,
            ..existing.clone().unwrap_or_default()
        };
        match crate::features::roster::save_and_push(server, owner_jid, owner, &item).await {
            Ok(()) => {}
            // A full roster: they stay as they were, and the lookup goes on.
            Err(error) if error.condition == StanzaErrorCondition::NotAllowed => {
                tracing::debug!(%owner, "roster full; contacts not added");
                if let Some((owner, owner_jid, contact_jid, before)) = first {
                    undo(server, owner, owner_jid, contact_jid, before).await?;
                }
                return Ok(());
            }
            Err(_) => return Err(ApiError::internal("saving a roster item")),
        }
        first = Some((owner, owner_jid, contact_jid, existing));
        changed = true;
    }
    if changed {
        tracing::debug!(%a, %b, "mutual contacts added to rosters");
        crate::features::presence::send_current_presence(server, &a_jid, b_jid.as_str()).await;
        crate::features::presence::send_current_presence(server, &b_jid, a_jid.as_str()).await;
    }
    Ok(())
}
