//! One-time sign-up codes, for every channel that sends them (SMS, email): the
//! one place for their abuse protection. A code is 6 random digits, stored as
//! an HMAC under a server secret, compared in constant time, valid for
//! `[phone] code_ttl_secs`, single-use; `max_code_failures` wrong tries void it
//! and lock the target for `cooldown_secs`; sending is limited per target and
//! per client IP. Targets are keys of one table: an E.164 number as is, an
//! email address as `email:<address>`, so the two can't collide.

use std::net::IpAddr;
use std::time::Duration;

use hmac::Mac;
use rand::Rng;
use subtle::ConstantTimeEq;

use super::ApiError;
use crate::Server;

/// Checks the lock-out and rate limits for sending a code to `target` from
/// `ip`, then stores a new code and returns it (to be sent, never logged).
/// `noun` names the target in errors ("number", "address").
pub(crate) async fn issue(
    server: &Server,
    target: &str,
    ip: IpAddr,
    noun: &str,
) -> Result<String, ApiError> {
    let now = crate::now_micros();
    if let Some(pending) = server.store.verification_code(target).await?
        && pending.locked_until_micros > now
    {
        return Err(cooling_down(pending.locked_until_micros - now, noun));
    }
    let api = &server.api;
    api.codes_per_ip.acquire_or_wait(ip).map_err(|wait| {
        ApiError::too_many(
            "rate_limited",
            "too many codes requested from this address",
            wait,
        )
    })?;
    api.codes_per_number
        .acquire_or_wait(target.to_owned())
        .map_err(|wait| {
            ApiError::too_many(
                "rate_limited",
                &format!("too many codes sent to this {noun}"),
                wait,
            )
        })?;
    let code = format!("{:06}", rand::rng().random_range(0..1_000_000u32));
    server
        .store
        .put_verification_code(
            target,
            &kith_store::VerificationCode {
                code_hash: code_hash(server, target, &code).await?,
                expires_micros: now + crate::secs_to_micros(server.config.phone.code_ttl_secs),
                failures: 0,
                locked_until_micros: 0,
            },
        )
        .await?;
    Ok(code)
}

/// Checks `code` for `target` and consumes it. Wrong codes count towards the
/// lock-out; the answer tells how many tries are left.
pub(crate) async fn check(
    server: &Server,
    target: &str,
    code: &str,
    noun: &str,
) -> Result<(), ApiError> {
    let invalid = || {
        ApiError::bad_request(
            "invalid_code",
            format!("the code is not valid for this {noun}"),
        )
    };
    let code = code.trim();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::bad_request(
            "invalid_code",
            "the code has 6 digits",
        ));
    }
    let now = crate::now_micros();
    let pending = server
        .store
        .verification_code(target)
        .await?
        .ok_or_else(invalid)?;
    if pending.locked_until_micros > now {
        return Err(cooling_down(pending.locked_until_micros - now, noun));
    }
    if pending.expires_micros <= now {
        return Err(ApiError::bad_request(
            "code_expired",
            "the code has expired; ask for a new one",
        ));
    }
    let hash = code_hash(server, target, code).await?;
    let right = bool::from(hash.ct_eq(&pending.code_hash));
    // The delete makes the code single-use even when two tries race.
    if right
        && server
            .store
            .consume_verification_code(target, &hash, now)
            .await?
    {
        return Ok(());
    }
    let config = &server.config.phone;
    let max = i64::from(config.max_code_failures);
    let failures = server
        .store
        .verification_failed(
            target,
            max,
            now + crate::secs_to_micros(config.cooldown_secs),
        )
        .await?;
    if failures >= max {
        return Err(ApiError::too_many(
            "too_many_attempts",
            "too many wrong codes; wait, then ask for a new code",
            Duration::from_secs(config.cooldown_secs),
        ));
    }
    Err(invalid().with("attempts_left", (max - failures).into()))
}

fn cooling_down(micros: i64, noun: &str) -> ApiError {
    ApiError::too_many(
        "too_many_attempts",
        &format!("too many wrong codes for this {noun}; wait before trying again"),
        Duration::from_micros(u64::try_from(micros).unwrap_or(0)),
    )
}

/// HMAC-SHA256 of `target:code` under a server secret kept in the store (shared
/// by all nodes), so a stolen table of codes can't be used as is.
async fn code_hash(server: &Server, target: &str, code: &str) -> Result<Vec<u8>, ApiError> {
    let mut mac = server
        .secrets
        .mac(&server.store, crate::secrets::Secret::PhoneCode)
        .await?;
    mac.update(target.as_bytes());
    mac.update(b":");
    mac.update(code.as_bytes());
    Ok(mac.finalize().into_bytes().to_vec())
}
