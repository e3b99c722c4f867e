//! `POST /register/email/start` and `POST /register/email/verify`: sign-up with
//! an email address proven by a 6-digit code sent over SMTP (`[smtp]`), for
//! deployments that don't want phone numbers. Allowed only when `email` is in
//! `[registration] methods`.
//!
//! The code is the phone flow's (`codes.rs`: hashing, expiry, wrong-try
//! lock-out, per-address and per-IP limits), keyed `email:<address>`. `start`
//! answers the same for every valid address. `verify` creates the account with
//! the chosen username (and password, if given, for XMPP clients that only know
//! passwords) and returns a device credential like phone sign-up does.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::Response;
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{Address, AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use serde::Deserialize;

use super::register::allowed;
use super::{ApiError, ApiJson, codes, json};
use crate::Server;
use crate::config::SignupMethod;
use crate::http::PeerAddr;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartRequest {
    email: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VerifyRequest {
    email: String,
    code: String,
    username: String,
    device_name: String,
    #[serde(default)]
    password: Option<String>,
}

pub(crate) async fn start(
    State(server): State<Arc<Server>>,
    peer: ConnectInfo<PeerAddr>,
    ApiJson(request): ApiJson<StartRequest>,
) -> Result<Response, ApiError> {
    allowed(&server, SignupMethod::Email)?;
    let email = parse_email(&request.email)?;
    let code = codes::issue(&server, &target(&email), super::peer_ip(&peer), "address").await?;
    if let Err(error) = send_code(&server, &email, &code).await {
        tracing::warn!(%error, "sending the email code failed");
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "email_failed",
            "the code could not be sent; try again later",
        ));
    }
    Ok(json(
        StatusCode::OK,
        serde_json::json!({
            "status": "code_sent",
            "email": email.to_string(),
            "expires_in": server.config.phone.code_ttl_secs,
        }),
    ))
}

pub(crate) async fn verify(
    State(server): State<Arc<Server>>,
    ApiJson(request): ApiJson<VerifyRequest>,
) -> Result<Response, ApiError> {
    allowed(&server, SignupMethod::Email)?;
    let email = parse_email(&request.email)?;
    let device_name = super::devices::check_device_name(&request.device_name)?;
    let username = crate::accounts::normalize_username(request.username.trim(), &server.domain)
        .ok()
        // Digit-only names are phone accounts' (`+15551234567` → `15551234567`).
        .filter(|name| !name.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_username",
                "not a valid username (letters needed; no spaces, '@' or '/')",
            )
        })?;
    if let Some(password) = &request.password {
        crate::accounts::check_password(password).map_err(|_| {
            ApiError::bad_request(
                "invalid_password",
                "the password must be 1 to 1024 characters",
            )
        })?;
    }
    // Checked before the code is used up, so a taken name costs no new code.
    if server.store.credentials(&username).await?.is_some() {
        return Err(username_taken());
    }
    codes::check(&server, &target(&email), &request.code, "address").await?;
    // Without a password the account's is random and unknown: it signs in with
    // device credentials, which share its salts.
    let password = request.password.unwrap_or_else(|| crate::random_id(32));
    let account = tokio::task::spawn_blocking(move || crate::accounts::credentials_for(&password))
        .await
        .map_err(ApiError::internal)?;
    if !server.store.create_user(&username, &account).await? {
        return Err(username_taken());
    }
    let issued = super::devices::issue(&server, &username, device_name).await?;
    tracing::info!(user = %username, device = %issued.row.id, "email sign-up");
    Ok(json(
        StatusCode::OK,
        serde_json::json!({
            "jid": super::jid_of(&server, &username),
            "device_id": issued.row.id,
            "credential": issued.credential,
            "new_account": true,
        }),
    ))
}

fn username_taken() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "username_taken",
        "this username is taken; choose another",
    )
}

/// An email address (RFC 5321 §4.1.2 syntax, as `lettre` parses it), with the
/// domain in lower case.
fn parse_email(input: &str) -> Result<Address, ApiError> {
    let invalid = || ApiError::bad_request("invalid_email", "not a valid email address");
    let input = input.trim();
    if input.len() > 254 {
        return Err(invalid());
    }
    let address = Address::from_str(input).map_err(|_| invalid())?;
    Address::new(address.user(), address.domain().to_ascii_lowercase()).map_err(|_| invalid())
}

fn target(email: &Address) -> String {
    format!("email:{email}")
}

/// Sends the code through the configured SMTP relay.
async fn send_code(server: &Server, to: &Address, code: &str) -> anyhow::Result<()> {
    let smtp = &server.config.smtp;
    let from: Mailbox = server.config.smtp_from(&server.domain).parse()?;
    let message = Message::builder()
        .from(from)
        .to(Mailbox::new(None, to.clone()))
        .subject(format!("{code} is your {} sign-up code", server.domain))
        .header(ContentType::TEXT_PLAIN)
        .body(format!(
            "Your sign-up code for {domain} is:\n\n    {code}\n\n\
             It is valid for {minutes} minutes. If you did not ask for it, ignore this mail.\n",
            domain = server.domain,
            minutes = server.config.phone.code_ttl_secs.div_ceil(60),
        ))?;
    let builder = if smtp.starttls {
        AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)?
    } else {
        AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&smtp.host)
    };
    let mut builder = builder
        .port(smtp.port)
        .timeout(Some(Duration::from_secs(smtp.timeout_secs)));
    if let (Some(username), Some(password)) = (&smtp.username, &smtp.password) {
        builder = builder.credentials(Credentials::new(username.clone(), password.clone()));
    }
    builder.build().send(message).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_parsed_and_domains_lowercased() {
        let email = parse_email(" Alice@Example.ORG ").expect("valid");
        assert_eq!(email.to_string(), "Alice@example.org");
        for bad in [
            "",
            "alice",
            "@example.org",
            "alice@",
            "a b@example.org",
            "a@b@c",
        ] {
            assert!(parse_email(bad).is_err(), "{bad}");
        }
    }
}
