//! The webhook for a mobile push relay (FCM, APNs): a JSON POST per
//! notification to `[push] webhook_url`, signed so the relay can tell it came
//! from this server.
//!
//! The body is `{user, device, node, count, sender, body?, options, at}`:
//! `node` and `options` are what the app gave in its `<enable/>` (typically the
//! relay's handle for the device's FCM/APNs token), `at` is the unix time in
//! seconds (a relay may refuse stale deliveries). The header
//! `X-Kith-Signature: sha256=<hex>` is HMAC-SHA256 of the exact body bytes under
//! `[push] webhook_secret`. The relay answers 2xx when it took the notification,
//! 410 when the device's registration should be removed; 429 and 5xx are retried.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use kith_proto::stream::{Limits, parse_fragment};
use kith_proto::{Element, ns};
use sha2::Sha256;

use super::{HttpNotification, Notification};

/// The header carrying the signature.
pub(crate) const SIGNATURE_HEADER: &str = "X-Kith-Signature";

/// `sha256=<hex HMAC-SHA256(secret, body)>`.
pub(crate) fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(7 + digest.len() * 2);
    hex.push_str("sha256=");
    for byte in digest {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// The JSON body for one notification.
pub(crate) fn payload(
    notification: &Notification,
    node: &str,
    options_xml: Option<&str>,
    at_secs: u64,
) -> Vec<u8> {
    let mut json = serde_json::json!({
        "user": notification.user,
        "device": notification.device,
        "node": node,
        "count": notification.count,
        "sender": notification.sender,
        "options": options(options_xml),
        "at": at_secs,
    });
    if let Some(body) = &notification.body {
        json["body"] = serde_json::Value::String(body.clone());
    }
    json.to_string().into_bytes()
}

/// The publish-options form the app gave, as `{var: value}` (`[values]` for a
/// field with several), without its FORM_TYPE.
fn options(options_xml: Option<&str>) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    let form: Option<Element> =
        options_xml.and_then(|xml| parse_fragment(xml.as_bytes(), Limits::default()).ok());
    if let Some(form) = form {
        for field in form.elements().filter(|e| e.is("field", ns::DATA_FORMS)) {
            let Some(var) = field.get_attr("var").filter(|var| *var != "FORM_TYPE") else {
                continue;
            };
            let mut values: Vec<serde_json::Value> = field
                .elements()
                .filter(|e| e.is("value", ns::DATA_FORMS))
                .map(|value| serde_json::Value::String(value.text_content()))
                .collect();
            let value = match values.len() {
                0 => serde_json::Value::Null,
                1 => values.remove(0),
                _ => serde_json::Value::Array(values),
            };
            map.insert(var.to_owned(), value);
        }
    }
    serde_json::Value::Object(map)
}

/// The signed POST to the relay.
pub(super) fn request(
    notification: &Notification,
    node: &str,
    options_xml: Option<&str>,
    url: &str,
    secret: &str,
) -> Result<HttpNotification, String> {
    let url = url::Url::parse(url).map_err(|error| format!("webhook_url: {error}"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let body = payload(notification, node, options_xml, now);
    let signature = signature(secret.as_bytes(), &body);
    Ok(HttpNotification {
        url,
        headers: vec![
            ("Content-Type", "application/json".to_owned()),
            (SIGNATURE_HEADER, signature),
        ],
        body,
        not_found_is_gone: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2.
    #[test]
    fn hmac_matches_the_rfc_4231_vector() {
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_payload_carries_what_the_relay_needs() {
        let notification = Notification {
            user: "bob@localhost".to_owned(),
            device: "phone".to_owned(),
            count: 3,
            sender: "alice@localhost".to_owned(),
            body: None,
        };
        let form = "<x xmlns='jabber:x:data' type='submit'>\
            <field var='FORM_TYPE'><value>http://jabber.org/protocol/pubsub#publish-options</value></field>\
            <field var='platform'><value>fcm</value></field></x>";
        let body = payload(&notification, "token-1", Some(form), 1_700_000_000);
        let json: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(json["user"], "bob@localhost");
        assert_eq!(json["device"], "phone");
        assert_eq!(json["node"], "token-1");
        assert_eq!(json["count"], 3);
        assert_eq!(json["sender"], "alice@localhost");
        assert_eq!(json["options"], serde_json::json!({"platform": "fcm"}));
        assert_eq!(json["at"], 1_700_000_000u64);
        assert!(json.get("body").is_none());

        let with_body = Notification {
            body: Some("hello".to_owned()),
            ..notification
        };
        let json: serde_json::Value =
            serde_json::from_slice(&payload(&with_body, "t", None, 0)).expect("json");
        assert_eq!(json["body"], "hello");
        assert_eq!(json["options"], serde_json::json!({}));
    }

    #[test]
    fn the_request_is_signed_over_its_exact_body() {
        let notification = Notification {
            user: "bob@localhost".to_owned(),
            device: "phone".to_owned(),
            count: 1,
            sender: "alice@localhost".to_owned(),
            body: None,
        };
        let request =
            request(&notification, "n", None, "https://relay.example/hook", "k").expect("request");
        let header = request
            .headers
            .iter()
            .find(|(name, _)| *name == SIGNATURE_HEADER)
            .map(|(_, value)| value.clone())
            .expect("signed");
        assert_eq!(header, signature(b"k", &request.body));
    }
}
