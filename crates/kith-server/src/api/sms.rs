//! Sending SMS codes: `console` (logs the code; development), `webhook` (a JSON
//! POST signed like the push webhook: `X-Kith-Signature: sha256=<hex HMAC>`), or
//! Twilio's Messages API (form POST with HTTP Basic auth, as Twilio documents it).
//! Every send has a timeout; a failure is logged and reported to the caller.

use std::time::Duration;

use crate::Server;
use crate::config::SmsSender;

#[derive(Debug, thiserror::Error)]
pub(crate) enum SmsError {
    #[error("SMS request failed: {0}")]
    Http(#[from] reqwest::Error),
    #[error("SMS gateway answered {0}")]
    Status(reqwest::StatusCode),
    #[error("SMS sender is not configured: {0}")]
    Config(&'static str),
}

/// The HTTP client for SMS gateways.
pub(crate) fn client(timeout_secs: u64) -> anyhow::Result<reqwest::Client> {
    let timeout = Duration::from_secs(timeout_secs);
    Ok(reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("kith/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Sends `code` to `phone` (E.164) through the configured sender.
pub(crate) async fn send(server: &Server, phone: &str, code: &str) -> Result<(), SmsError> {
    let config = &server.config.sms;
    let text = format!("Your {} code is {code}", server.domain);
    let http = &server.api.sms_http;
    match config.sender {
        SmsSender::Console => {
            // The one place a code is logged, by design: the development sender.
            tracing::info!(%phone, %code, "SMS code (console sender)");
            Ok(())
        }
        SmsSender::Webhook => {
            let url = config
                .webhook_url
                .as_deref()
                .ok_or(SmsError::Config("sms.webhook_url"))?;
            let secret = config
                .webhook_secret
                .as_deref()
                .ok_or(SmsError::Config("sms.webhook_secret"))?;
            let body = serde_json::json!({ "to": phone, "code": code, "text": text }).to_string();
            let signature =
                crate::features::push::webhook::signature(secret.as_bytes(), body.as_bytes());
            let response = http
                .post(url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header(crate::features::push::webhook::SIGNATURE_HEADER, signature)
                .body(body)
                .send()
                .await?;
            check(response.status())
        }
        SmsSender::Twilio => {
            let (Some(sid), Some(token), Some(from)) = (
                config.twilio_account_sid.as_deref(),
                config.twilio_auth_token.as_deref(),
                config.twilio_from.as_deref(),
            ) else {
                return Err(SmsError::Config("sms.twilio_*"));
            };
            let url = format!(
                "{}/2010-04-01/Accounts/{sid}/Messages.json",
                config.twilio_base_url.trim_end_matches('/')
            );
            let form = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("To", phone)
                .append_pair("From", from)
                .append_pair("Body", &text)
                .finish();
            let response = http
                .post(url)
                .basic_auth(sid, Some(token))
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(form)
                .send()
                .await?;
            check(response.status())
        }
    }
}

fn check(status: reqwest::StatusCode) -> Result<(), SmsError> {
    if status.is_success() {
        Ok(())
    } else {
        Err(SmsError::Status(status))
    }
}
