//! Built-in Web Push for browsers: delivery to the subscription's endpoint
//! (RFC 8030 §5), the payload encrypted for the browser (RFC 8291, `aes128gcm`
//! content coding of RFC 8188), and the server identified by a VAPID token
//! (RFC 8292).
//!
//! The VAPID key pair (P-256) is created on first start and kept in the store,
//! so every node on one database signs with the same key: a browser subscribes
//! with the public key as `applicationServerKey`, and the push service refuses
//! pushes signed by any other.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kith_proto::StanzaError;
use kith_proto::error::StanzaErrorCondition;
use kith_store::{PushKind, Store};
use p256::ecdsa::signature::Signer as _;
use p256::ecdsa::{Signature, SigningKey};
use url::{Host, Url};
use web_push_native::p256 as wp256;

use super::{HttpNotification, Notification, bad_request, single_value};

/// The store's name for the VAPID private key (a raw 32-byte P-256 scalar).
const SECRET_NAME: &str = "vapid-p256";
/// Longest endpoint URL accepted.
const MAX_ENDPOINT_LEN: usize = 2048;
/// RFC 8292 §2: `exp` at most 24 hours ahead; 12 leaves room for clock skew.
const TOKEN_LIFETIME_SECS: u64 = 12 * 3600;
/// RFC 8030 §5.4: a pending notification with the same topic is replaced, so a
/// browser that was away gets the latest count, not one push per message.
const TOPIC: &str = "kith-messages";

/// The server's VAPID key pair.
pub(crate) struct VapidKey {
    signing: SigningKey,
    /// The uncompressed public point, base64url.
    public: String,
}

impl VapidKey {
    /// The key pair in the store, or a new one stored now (first start).
    pub(crate) async fn load_or_create(store: &Store) -> anyhow::Result<VapidKey> {
        let candidate = loop {
            let bytes: [u8; 32] = rand::random();
            // Almost every 32-byte string is a valid scalar; retry the rest.
            if SigningKey::from_slice(&bytes).is_ok() {
                break bytes;
            }
        };
        let stored = store.secret_get_or_insert(SECRET_NAME, &candidate).await?;
        VapidKey::from_secret(&stored)
    }

    pub(crate) fn from_secret(bytes: &[u8]) -> anyhow::Result<VapidKey> {
        let signing = SigningKey::from_slice(bytes)
            .map_err(|_| anyhow::anyhow!("the stored VAPID key is not a P-256 private key"))?;
        let point = signing.verifying_key().to_encoded_point(false);
        Ok(VapidKey {
            public: URL_SAFE_NO_PAD.encode(point.as_bytes()),
            signing,
        })
    }

    pub(crate) fn public_key(&self) -> &str {
        &self.public
    }

    /// RFC 8292 §3: the `Authorization` header, a JWT for `audience` (the push
    /// resource's origin) signed with ES256, and the public key.
    pub(crate) fn authorization(&self, audience: &str, subject: &str, expires_at: u64) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"ES256"}"#);
        let claims = serde_json::json!({ "aud": audience, "exp": expires_at, "sub": subject });
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let signing_input = format!("{header}.{claims}");
        // RFC 7518 §3.4: the JWS signature is R || S, 32 bytes each.
        let signature: Signature = self.signing.sign(signing_input.as_bytes());
        format!(
            "vapid t={signing_input}.{}, k={}",
            URL_SAFE_NO_PAD.encode(signature.to_bytes()),
            self.public
        )
    }
}

/// A Web Push subscription from an `<enable/>` form (fields `endpoint`,
/// `p256dh`, `auth`, as in a browser's `PushSubscription.toJSON()`).
pub(super) fn subscription_from_form(
    fields: &[(String, Vec<String>)],
    allow_loopback: bool,
) -> Result<PushKind, StanzaError> {
    let endpoint =
        single_value(fields, "endpoint").ok_or_else(|| bad_request("the endpoint is empty"))?;
    let endpoint = validate_endpoint(endpoint, allow_loopback)
        .map_err(|why| StanzaError::new(StanzaErrorCondition::NotAcceptable).with_text(why))?;
    let p256dh = single_value(fields, "p256dh")
        .ok_or_else(|| bad_request("a Web Push subscription needs p256dh"))?;
    let auth = single_value(fields, "auth")
        .ok_or_else(|| bad_request("a Web Push subscription needs auth"))?;
    let p256dh = decode_base64url(p256dh)
        .filter(|key| key.len() == 65 && wp256::PublicKey::from_sec1_bytes(key).is_ok())
        .ok_or_else(|| bad_request("p256dh must be an uncompressed P-256 public key"))?;
    let auth = decode_base64url(auth)
        .filter(|auth| auth.len() == 16)
        .ok_or_else(|| bad_request("auth must be 16 bytes, base64url"))?;
    Ok(PushKind::WebPush {
        endpoint: endpoint.to_string(),
        p256dh: URL_SAFE_NO_PAD.encode(p256dh),
        auth: URL_SAFE_NO_PAD.encode(auth),
    })
}

/// Base64url with or without padding (and the standard alphabet, which some
/// libraries produce).
fn decode_base64url(text: &str) -> Option<Vec<u8>> {
    let normalised: String = text
        .trim()
        .trim_end_matches('=')
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    URL_SAFE_NO_PAD.decode(normalised).ok()
}

/// Checks a push endpoint before it is stored: `https` on a public host, no
/// credentials. With `allow_loopback`, `http` on 127.0.0.0/8, `::1` or
/// `localhost` is accepted too (tests run their receiver there).
///
/// The server makes requests to these URLs on a user's say-so, so internal
/// addresses written as IP literals are refused; names are not resolved here.
pub(crate) fn validate_endpoint(endpoint: &str, allow_loopback: bool) -> Result<Url, &'static str> {
    if endpoint.len() > MAX_ENDPOINT_LEN {
        return Err("the endpoint URL is too long");
    }
    let url = Url::parse(endpoint).map_err(|_| "the endpoint is not a valid URL")?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("the endpoint must not carry credentials");
    }
    if url.fragment().is_some() {
        return Err("the endpoint must not have a fragment");
    }
    let host = url.host().ok_or("the endpoint has no host")?;
    let loopback_allowed = allow_loopback && is_loopback(&host);
    match url.scheme() {
        "https" => {}
        "http" if loopback_allowed => {}
        _ => return Err("the endpoint must be an https URL"),
    }
    if !loopback_allowed && !is_public(&host) {
        return Err("the endpoint must be on a public host");
    }
    Ok(url)
}

fn is_loopback(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(name) => {
            let name = name.to_ascii_lowercase();
            name == "localhost" || name.ends_with(".localhost")
        }
        Host::Ipv4(ip) => ip.is_loopback(),
        Host::Ipv6(ip) => ip.is_loopback(),
    }
}

fn is_public(host: &Host<&str>) -> bool {
    match host {
        Host::Domain(name) => {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            name.contains('.')
                && !["localhost", "local", "internal", "lan", "home.arpa"]
                    .iter()
                    .any(|suffix| name == *suffix || name.ends_with(&format!(".{suffix}")))
        }
        Host::Ipv4(ip) => is_public_v4(*ip),
        Host::Ipv6(ip) => match ip.to_ipv4_mapped() {
            Some(v4) => is_public_v4(v4),
            None => {
                let first = ip.segments()[0];
                !(ip.is_loopback()
                    || ip.is_unspecified()
                    || ip.is_multicast()
                    || (first & 0xfe00) == 0xfc00 // unique local fc00::/7
                    || (first & 0xffc0) == 0xfe80) // link-local fe80::/10
            }
        },
    }
}

fn is_public_v4(ip: std::net::Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b))) // shared address space, RFC 6598
}

/// What the browser's service worker receives (decrypted): JSON.
pub(crate) fn payload(notification: &Notification) -> Vec<u8> {
    let mut json = serde_json::json!({
        "type": "message",
        "user": notification.user,
        "device": notification.device,
        "count": notification.count,
        "sender": notification.sender,
    });
    if let Some(body) = &notification.body {
        json["body"] = serde_json::Value::String(body.clone());
    }
    json.to_string().into_bytes()
}

/// The encrypted, VAPID-signed POST for one subscription.
pub(super) fn request(
    vapid: &VapidKey,
    notification: &Notification,
    endpoint: &str,
    p256dh: &str,
    auth: &str,
    subject: &str,
    ttl_secs: u64,
) -> Result<HttpNotification, String> {
    let url = Url::parse(endpoint).map_err(|error| format!("stored endpoint: {error}"))?;
    let ua_public = decode_base64url(p256dh)
        .and_then(|key| wp256::PublicKey::from_sec1_bytes(&key).ok())
        .ok_or("stored p256dh is not a P-256 key")?;
    let auth = decode_base64url(auth)
        .filter(|auth| auth.len() == 16)
        .ok_or("stored auth is not 16 bytes")?;
    let auth = web_push_native::Auth::clone_from_slice(&auth);
    let body = web_push_native::encrypt(payload(notification), &ua_public, &auth)
        .map_err(|error| format!("encrypting: {error}"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let audience = url.origin().ascii_serialization();
    let authorization = vapid.authorization(&audience, subject, now + TOKEN_LIFETIME_SECS);
    Ok(HttpNotification {
        url,
        headers: vec![
            ("TTL", ttl_secs.to_string()),
            ("Urgency", "high".to_owned()),
            ("Topic", TOPIC.to_owned()),
            ("Content-Encoding", "aes128gcm".to_owned()),
            ("Content-Type", "application/octet-stream".to_owned()),
            ("Authorization", authorization),
        ],
        body,
        not_found_is_gone: true,
    })
}

#[cfg(test)]
mod tests {
    use p256::ecdsa::signature::Verifier as _;
    use p256::ecdsa::{Signature, VerifyingKey};

    use super::*;

    const SECRET: [u8; 32] = [7; 32];

    #[test]
    fn endpoints_must_be_https_on_public_hosts() {
        assert!(validate_endpoint("https://fcm.googleapis.com/fcm/send/abc", false).is_ok());
        assert!(
            validate_endpoint(
                "https://updates.push.services.mozilla.com/wpush/v2/x",
                false
            )
            .is_ok()
        );
        for refused in [
            "http://push.example.net/x",
            "ftp://push.example.net/x",
            "not a url",
            "https://user:pw@push.example.net/x",
            "https://push.example.net/x#frag",
            "https://127.0.0.1/x",
            "https://10.1.2.3/x",
            "https://192.168.0.1/x",
            "https://169.254.169.254/latest",
            "https://[::1]/x",
            "https://[fd00::1]/x",
            "https://[::ffff:10.0.0.1]/x",
            "https://localhost/x",
            "https://intranet/x",
            "https://printer.local/x",
            "javascript:alert(1)",
        ] {
            assert!(
                validate_endpoint(refused, false).is_err(),
                "{refused} accepted"
            );
        }
        let long = format!("https://push.example.net/{}", "a".repeat(3000));
        assert!(validate_endpoint(&long, false).is_err());
    }

    #[test]
    fn loopback_http_only_when_allowed() {
        for loopback in [
            "http://127.0.0.1:8080/push",
            "http://localhost:1/x",
            "http://[::1]:9/x",
        ] {
            assert!(validate_endpoint(loopback, false).is_err(), "{loopback}");
            assert!(validate_endpoint(loopback, true).is_ok(), "{loopback}");
        }
        // Allowing loopback doesn't open other private addresses.
        assert!(validate_endpoint("http://10.0.0.1/x", true).is_err());
        assert!(validate_endpoint("https://10.0.0.1/x", true).is_err());
    }

    #[test]
    fn subscription_keys_are_checked() {
        let fields = |p256dh: &str, auth: &str| {
            vec![
                (
                    "endpoint".to_owned(),
                    vec!["https://push.example.net/a".to_owned()],
                ),
                ("p256dh".to_owned(), vec![p256dh.to_owned()]),
                ("auth".to_owned(), vec![auth.to_owned()]),
            ]
        };
        let key = VapidKey::from_secret(&SECRET).expect("key");
        let good = fields(key.public_key(), "AAAAAAAAAAAAAAAAAAAAAA");
        assert!(subscription_from_form(&good, false).is_ok());
        // Padded and standard-alphabet spellings are accepted and normalised.
        let padded = fields(key.public_key(), "AAAAAAAAAAAAAAAAAAAAAA==");
        assert!(subscription_from_form(&padded, false).is_ok());
        let short_auth = fields(key.public_key(), "AAAA");
        assert!(subscription_from_form(&short_auth, false).is_err());
        let not_a_point = fields(&URL_SAFE_NO_PAD.encode([4u8; 65]), "AAAAAAAAAAAAAAAAAAAAAA");
        assert!(subscription_from_form(&not_a_point, false).is_err());
        let bad_endpoint = vec![
            (
                "endpoint".to_owned(),
                vec!["http://push.example.net/a".to_owned()],
            ),
            ("p256dh".to_owned(), vec![key.public_key().to_owned()]),
            ("auth".to_owned(), vec!["AAAAAAAAAAAAAAAAAAAAAA".to_owned()]),
        ];
        let refused = subscription_from_form(&bad_endpoint, false).expect_err("refused");
        assert_eq!(refused.condition, StanzaErrorCondition::NotAcceptable);
    }

    #[test]
    fn the_vapid_token_verifies_with_the_public_key() {
        let key = VapidKey::from_secret(&SECRET).expect("key");
        let header = key.authorization(
            "https://push.example.net",
            "mailto:ops@example.org",
            1_900_000_000,
        );
        let rest = header.strip_prefix("vapid t=").expect("scheme");
        let (token, public) = rest.split_once(", k=").expect("k");
        assert_eq!(public, key.public_key());
        let (signing_input, signature) = token.rsplit_once('.').expect("three parts");
        let (_, claims) = signing_input.split_once('.').expect("claims");
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).expect("b64")).expect("json");
        assert_eq!(claims["aud"], "https://push.example.net");
        assert_eq!(claims["exp"], 1_900_000_000u64);
        assert_eq!(claims["sub"], "mailto:ops@example.org");
        let verifying =
            VerifyingKey::from_sec1_bytes(&URL_SAFE_NO_PAD.decode(public).expect("b64 key"))
                .expect("point");
        let signature = Signature::from_slice(&URL_SAFE_NO_PAD.decode(signature).expect("b64 sig"))
            .expect("64 bytes");
        verifying
            .verify(signing_input.as_bytes(), &signature)
            .expect("valid ES256 signature");
    }

    #[test]
    fn the_payload_decrypts_with_the_subscription_key() {
        // A browser's side of the subscription.
        let browser = wp256::SecretKey::from_slice(&[9; 32]).expect("scalar");
        let p256dh = {
            use wp256::elliptic_curve::sec1::ToEncodedPoint as _;
            URL_SAFE_NO_PAD.encode(browser.public_key().to_encoded_point(false).as_bytes())
        };
        let auth = [5u8; 16];
        let vapid = VapidKey::from_secret(&SECRET).expect("key");
        let notification = Notification {
            user: "bob@localhost".to_owned(),
            device: "browser".to_owned(),
            count: 2,
            sender: "alice@localhost".to_owned(),
            body: None,
        };
        let request = request(
            &vapid,
            &notification,
            "https://push.example.net:8443/send/1",
            &p256dh,
            &URL_SAFE_NO_PAD.encode(auth),
            "mailto:ops@example.org",
            60,
        )
        .expect("request");
        let plain = web_push_native::decrypt(
            request.body.clone(),
            &browser,
            &web_push_native::Auth::clone_from_slice(&auth),
        )
        .expect("decrypts");
        let json: serde_json::Value = serde_json::from_slice(&plain).expect("json");
        assert_eq!(json["count"], 2);
        assert_eq!(json["sender"], "alice@localhost");
        assert!(json.get("body").is_none(), "no body unless configured");
        let authorization = request
            .headers
            .iter()
            .find(|(name, _)| *name == "Authorization")
            .map(|(_, value)| value.clone())
            .expect("vapid header");
        let claims = authorization
            .strip_prefix("vapid t=")
            .and_then(|rest| rest.split('.').nth(1))
            .expect("claims");
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).expect("b64")).expect("json");
        // RFC 8292 §2: the audience is the origin, port included.
        assert_eq!(claims["aud"], "https://push.example.net:8443");
    }
}
