//! Configuration: one TOML file, every key optional with a safe default.
//!
//! `kith serve` with no file runs on the defaults below; `kith.example.toml` at the
//! repository root documents every key. Unknown keys are errors, so a typo never
//! silently falls back to a default.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerSection,
    pub listen: ListenSection,
    pub tls: TlsSection,
    pub storage: StorageSection,
    pub registration: RegistrationSection,
    pub limits: LimitsSection,
    pub delivery: DeliverySection,
    pub archive: ArchiveSection,
    pub push: PushSection,
    pub phone: PhoneSection,
    pub sms: SmsSection,
    pub smtp: SmtpSection,
    pub pep: PepSection,
    pub upload: UploadSection,
    pub web: WebSection,
    pub muc: MucSection,
    pub cluster: ClusterSection,
    pub metrics: MetricsSection,
    pub calls: CallsSection,
    pub log: LogSection,
}

/// Scale-out (`cluster/`): several nodes serving one domain on one shared
/// PostgreSQL store reach each other's sessions over NATS. Off by default.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    /// The NATS server(s) the nodes share, e.g. `nats://10.0.0.5:4222`
    /// (several comma-separated); unset: this node serves alone.
    pub nats: Option<String>,
    /// This node's name in logs; default: a random one per start.
    pub node: Option<String>,
    /// CA certificate(s) (PEM) that sign the NATS servers' certificates, for
    /// `tls://` addresses; default: the system's trust store.
    pub nats_ca: Option<PathBuf>,
    /// Bytes of frames that may wait for a slow or stalled NATS link; past
    /// that a frame is dropped (a wake-up's loss is made good once the link
    /// keeps up again: every node's sessions read their logs).
    pub max_outbox_bytes: usize,
    /// Seconds between the group host's looks for occupants whose session no
    /// node holds any more (their node stopped without a word).
    pub occupant_check_secs: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        ClusterSection {
            nats: None,
            node: None,
            nats_ca: None,
            max_outbox_bytes: 64 << 20,
            occupant_check_secs: 60,
        }
    }
}

/// Personal eventing (XEP-0163 PEP): each account's pubsub nodes, bounded.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PepSection {
    /// Nodes one account may have (OMEMO uses one per device bundle).
    pub max_nodes_per_user: usize,
    /// Largest item payload, serialised, in bytes (avatar data has its own limit).
    pub max_item_bytes: usize,
    /// Items one node keeps at most; `pubsub#max_items = max` means this many.
    pub max_items_per_node: usize,
    /// Largest avatar image (XEP-0084 `urn:xmpp:avatar:data`), decoded, in bytes.
    pub max_avatar_bytes: usize,
    /// Longest display name set through the HTTP profile API, in characters.
    pub max_nick_chars: usize,
    /// Longest about text set through the HTTP profile API, in characters.
    pub max_about_chars: usize,
    /// XEP-0115 capability sets remembered (one per client version seen).
    pub caps_cache_size: usize,
    /// Seconds between sweeps retracting expired items (`pubsub#item_expire`,
    /// e.g. a live location's end time). Reads never return an expired item.
    pub expiry_check_secs: u64,
}

impl Default for PepSection {
    fn default() -> Self {
        PepSection {
            max_nodes_per_user: 100,
            max_item_bytes: 64 * 1024,
            max_items_per_node: 100,
            max_avatar_bytes: 128 * 1024,
            max_nick_chars: 64,
            max_about_chars: 700,
            caps_cache_size: 10_000,
            expiry_check_secs: 5,
        }
    }
}

impl PepSection {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        for (key, value) in [
            ("pep.max_nodes_per_user", self.max_nodes_per_user),
            ("pep.max_items_per_node", self.max_items_per_node),
            ("pep.max_item_bytes", self.max_item_bytes),
        ] {
            if value == 0 {
                return Err((key, "must be positive".to_owned()));
            }
        }
        if self.expiry_check_secs == 0 {
            return Err(("pep.expiry_check_secs", "must be positive".to_owned()));
        }
        // An avatar larger than a stanza can carry is refused by the stanza
        // limit (limits.max_stanza_size) before it gets here; that is no error.
        Ok(())
    }
}

/// Push notifications to devices that are offline (XEP-0357, Web Push, webhook).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushSection {
    /// Whether clients may enable push notifications at all.
    pub enabled: bool,
    /// Put the message text into notifications. Off by default: push services
    /// and relays then learn only that a message arrived, and from whom.
    pub include_body: bool,
    /// A relay for mobile push (FCM/APNs) that receives a signed JSON POST for
    /// each notification of a device registered with the server's own domain.
    pub webhook_url: Option<String>,
    /// The HMAC-SHA256 key signing webhook bodies (`X-Kith-Signature`).
    pub webhook_secret: Option<String>,
    /// The VAPID `sub` contact (RFC 8292 §2.1), `mailto:` or `https:`.
    /// Default: `mailto:postmaster@<domain>`.
    pub vapid_subject: Option<String>,
    /// Accept `http://` Web Push endpoints on loopback addresses (for tests);
    /// otherwise only `https://` endpoints on public hosts are accepted.
    pub allow_loopback_endpoints: bool,
    /// Push registrations one account may hold.
    pub max_registrations_per_user: usize,
    /// Notifications being sent at once (HTTP requests in flight).
    pub concurrency: usize,
    /// Notifications waiting to be sent; past this, new ones are dropped.
    pub queue: usize,
    /// Attempts per notification before giving up (1 = no retry).
    pub attempts: u32,
    /// Delay before the first retry, in milliseconds; it doubles each time.
    pub retry_delay_ms: u64,
    /// Seconds one HTTP request may take.
    pub request_timeout_secs: u64,
    /// Seconds a Web Push service keeps an undelivered notification (RFC 8030 TTL).
    pub webpush_ttl_secs: u64,
}

impl Default for PushSection {
    fn default() -> Self {
        PushSection {
            enabled: true,
            include_body: false,
            webhook_url: None,
            webhook_secret: None,
            vapid_subject: None,
            allow_loopback_endpoints: false,
            max_registrations_per_user: 20,
            concurrency: 16,
            queue: 10_000,
            attempts: 4,
            retry_delay_ms: 1000,
            request_timeout_secs: 10,
            webpush_ttl_secs: 86_400,
        }
    }
}

impl PushSection {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(url) = &self.webhook_url {
            let parsed = url::Url::parse(url)
                .map_err(|error| ("push.webhook_url", format!("not a URL: {error}")))?;
            if !matches!(parsed.scheme(), "http" | "https") || !parsed.has_host() {
                return Err(("push.webhook_url", "must be an http(s) URL".to_owned()));
            }
            if self.webhook_secret.as_deref().is_none_or(str::is_empty) {
                return Err((
                    "push.webhook_secret",
                    "must be set when push.webhook_url is".to_owned(),
                ));
            }
        }
        if let Some(subject) = &self.vapid_subject
            && !(subject.starts_with("mailto:") || subject.starts_with("https://"))
        {
            return Err((
                "push.vapid_subject",
                "must be a mailto: or https: URI (RFC 8292 §2.1)".to_owned(),
            ));
        }
        if self.concurrency == 0 || self.queue == 0 {
            return Err((
                "push.concurrency",
                "push.concurrency and push.queue must be positive".to_owned(),
            ));
        }
        if !(1..=10).contains(&self.attempts) {
            return Err(("push.attempts", "must be between 1 and 10".to_owned()));
        }
        if self.request_timeout_secs == 0 {
            return Err(("push.request_timeout_secs", "must be positive".to_owned()));
        }
        Ok(())
    }

    /// The VAPID subject in force.
    pub fn vapid_subject_for(&self, domain: &str) -> String {
        self.vapid_subject
            .clone()
            .unwrap_or_else(|| format!("mailto:postmaster@{domain}"))
    }
}

/// Phone-number sign-up, device credentials and contact discovery (the HTTP API
/// under `/api/v1/`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PhoneSection {
    /// Whether the phone-number API is served.
    pub enabled: bool,
    /// ISO 3166 region (e.g. "DE") for numbers given without a country code at
    /// sign-up; unset: such numbers are refused. Discovery uses the caller's own
    /// country instead.
    pub default_region: Option<String>,
    /// Seconds an SMS code stays valid.
    pub code_ttl_secs: u64,
    /// Wrong tries of one code before it is voided and the number cools down.
    pub max_code_failures: u32,
    /// Seconds a number is locked after too many wrong tries.
    pub cooldown_secs: u64,
    /// Codes sent to one number per hour.
    pub codes_per_number_per_hour: u32,
    /// Codes requested by one IP address per hour.
    pub codes_per_ip_per_hour: u32,
    /// Seconds a link-a-device code stays valid.
    pub link_ttl_secs: u64,
    /// Device credentials one account may hold.
    pub max_devices_per_user: usize,
    /// Numbers one discovery request may hold.
    pub discover_max_per_request: usize,
    /// Numbers one account may look up per day (UTC).
    pub discover_max_per_day: i64,
    /// Largest API request body, in bytes.
    pub max_body_bytes: usize,
}

impl Default for PhoneSection {
    fn default() -> Self {
        PhoneSection {
            enabled: true,
            default_region: None,
            code_ttl_secs: 600,
            max_code_failures: 5,
            cooldown_secs: 900,
            codes_per_number_per_hour: 3,
            codes_per_ip_per_hour: 20,
            link_ttl_secs: 300,
            max_devices_per_user: 16,
            discover_max_per_request: 1000,
            discover_max_per_day: 5000,
            max_body_bytes: 64 * 1024,
        }
    }
}

/// How SMS codes are sent.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SmsSender {
    /// Log the code (development).
    #[default]
    Console,
    /// HMAC-signed JSON POST to `webhook_url`.
    Webhook,
    /// Twilio's Messages REST API (or one that speaks it).
    Twilio,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmsSection {
    pub sender: SmsSender,
    pub webhook_url: Option<String>,
    /// HMAC-SHA256 key for the `X-Kith-Signature` header of webhook posts.
    pub webhook_secret: Option<String>,
    pub twilio_account_sid: Option<String>,
    pub twilio_auth_token: Option<String>,
    /// The sending number (E.164) or messaging service.
    pub twilio_from: Option<String>,
    /// API base URL (a stand-in for tests).
    pub twilio_base_url: String,
    /// Seconds one send may take.
    pub timeout_secs: u64,
}

impl Default for SmsSection {
    fn default() -> Self {
        SmsSection {
            sender: SmsSender::Console,
            webhook_url: None,
            webhook_secret: None,
            twilio_account_sid: None,
            twilio_auth_token: None,
            twilio_from: None,
            twilio_base_url: "https://api.twilio.com".to_owned(),
            timeout_secs: 10,
        }
    }
}

impl SmsSection {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let missing = |key: &'static str, value: &Option<String>| match value {
            Some(v) if !v.is_empty() => Ok(()),
            _ => Err((key, format!("must be set for sender = {:?}", self.sender))),
        };
        match self.sender {
            SmsSender::Console => {}
            SmsSender::Webhook => {
                missing("sms.webhook_url", &self.webhook_url)?;
                missing("sms.webhook_secret", &self.webhook_secret)?;
            }
            SmsSender::Twilio => {
                missing("sms.twilio_account_sid", &self.twilio_account_sid)?;
                missing("sms.twilio_auth_token", &self.twilio_auth_token)?;
                missing("sms.twilio_from", &self.twilio_from)?;
            }
        }
        if self.timeout_secs == 0 {
            return Err(("sms.timeout_secs", "must be positive".to_owned()));
        }
        Ok(())
    }
}

/// XEP-0363 HTTP File Upload and the blob store behind it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadSection {
    /// Whether the upload service exists at all.
    pub enabled: bool,
    /// The service's JID. Default: `upload.<domain>`.
    pub domain: Option<String>,
    /// Base of the PUT/GET URLs handed out, e.g. `https://media.example.org`.
    /// Default: `https://<domain>:<bound HTTPS port>`.
    pub public_url: Option<String>,
    /// Where files live: `fs` (a local directory) or `s3` (S3-compatible).
    pub backend: UploadBackend,
    /// For `fs`: the directory. Default: `<data_dir>/uploads`.
    pub dir: Option<PathBuf>,
    /// For `s3`: the endpoint URL (unset: AWS for the region).
    pub s3_endpoint: Option<String>,
    pub s3_bucket: String,
    pub s3_region: String,
    pub s3_access_key_id: Option<String>,
    pub s3_secret_access_key: Option<String>,
    /// Path-style URLs (`endpoint/bucket/key`), needed by most non-AWS servers.
    pub s3_path_style: bool,
    /// Allow an `http://` endpoint (loopback test servers).
    pub s3_allow_http: bool,
    /// Largest file accepted, in bytes (at most 2 GiB).
    pub max_file_size: u64,
    /// Bytes one account may hold in uploads (slots not yet used count too).
    pub quota_per_user: u64,
    /// MIME types accepted, exact (`application/pdf`) or by family (`image/*`).
    /// Empty: any type (non-media types are then served as attachments).
    pub allowed_types: Vec<String>,
    /// Seconds a slot may wait for its PUT.
    pub slot_expiry_secs: u64,
    /// Seconds a stored file is kept (default 30 days).
    pub expire_after_secs: u64,
    /// Seconds between sweeps removing expired slots and files.
    pub sweep_interval_secs: u64,
    /// Longest side of generated thumbnails, in pixels.
    pub thumbnail_size: u32,
    /// Images larger than this many pixels (or bytes) get no thumbnail
    /// (decompression bombs are refused by the decoder's limits).
    pub thumbnail_max_pixels: u64,
    pub thumbnail_max_bytes: u64,
}

/// Where uploaded files are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UploadBackend {
    Fs,
    S3,
}

/// XEP-0363 leaves the limit to the operator; kith caps it at 2 GiB.
pub const MAX_UPLOAD_FILE_SIZE: u64 = 2 * 1024 * 1024 * 1024;

impl Default for UploadSection {
    fn default() -> Self {
        UploadSection {
            enabled: true,
            domain: None,
            public_url: None,
            backend: UploadBackend::Fs,
            dir: None,
            s3_endpoint: None,
            s3_bucket: String::new(),
            s3_region: "us-east-1".to_owned(),
            s3_access_key_id: None,
            s3_secret_access_key: None,
            s3_path_style: false,
            s3_allow_http: false,
            max_file_size: 100 * 1024 * 1024,
            quota_per_user: 1024 * 1024 * 1024,
            allowed_types: Vec::new(),
            slot_expiry_secs: 300,
            expire_after_secs: 30 * 86_400,
            sweep_interval_secs: 3600,
            thumbnail_size: 320,
            thumbnail_max_pixels: 50_000_000,
            thumbnail_max_bytes: 64 * 1024 * 1024,
        }
    }
}

impl UploadSection {
    fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.max_file_size == 0 || self.max_file_size > MAX_UPLOAD_FILE_SIZE {
            return Err((
                "upload.max_file_size",
                format!("must be between 1 and {MAX_UPLOAD_FILE_SIZE} bytes"),
            ));
        }
        if let Some(url) = &self.public_url {
            let parsed = url::Url::parse(url)
                .map_err(|error| ("upload.public_url", format!("not a URL: {error}")))?;
            if !matches!(parsed.scheme(), "http" | "https") || !parsed.has_host() {
                return Err(("upload.public_url", "must be an http(s) URL".to_owned()));
            }
        }
        if let Some(domain) = &self.domain
            && kith_proto::BareJid::new(domain).map_or(true, |jid| jid.node().is_some())
        {
            return Err(("upload.domain", format!("{domain:?} is not a valid domain")));
        }
        if self.backend == UploadBackend::S3 && self.s3_bucket.is_empty() {
            return Err((
                "upload.s3_bucket",
                "must be set when upload.backend = \"s3\"".to_owned(),
            ));
        }
        for kind in &self.allowed_types {
            let valid = kind
                .split_once('/')
                .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && a != "*");
            if !valid {
                return Err((
                    "upload.allowed_types",
                    format!("{kind:?} is not a MIME type like image/png or image/*"),
                ));
            }
        }
        if self.slot_expiry_secs == 0
            || self.expire_after_secs == 0
            || self.sweep_interval_secs == 0
            || self.thumbnail_size == 0
        {
            return Err((
                "upload.expire_after_secs",
                "upload times and sizes must be positive".to_owned(),
            ));
        }
        Ok(())
    }
}

/// Group chats (XEP-0045 rooms; WhatsApp groups are persistent members-only rooms).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MucSection {
    /// Whether the group chat service runs.
    pub enabled: bool,
    /// The service lives at `<subdomain>.<domain>`.
    pub subdomain: String,
    /// Members (member, admin, owner) one group may have.
    pub max_members: usize,
    /// Occupants in one room at once.
    pub max_occupants: usize,
    /// Messages of history a client gets when it joins (XEP-0045 §7.2.15), unless
    /// it asks for fewer.
    pub history_on_join: usize,
    /// Server default for new rooms: a new member sees history from their joining
    /// only (rooms may change it in their configuration).
    pub history_from_join: bool,
    /// Rooms one user may create.
    pub max_rooms_per_user: usize,
    /// Invite links are `<invite_base_url><token>`; default `https://<domain>/join/`.
    pub invite_base_url: Option<String>,
    /// Invite links one room may hold (revoked ones included).
    pub max_invites_per_room: usize,
}

impl Default for MucSection {
    fn default() -> Self {
        MucSection {
            enabled: true,
            subdomain: "conference".to_owned(),
            max_members: 1024,
            max_occupants: 2048,
            history_on_join: 20,
            history_from_join: true,
            max_rooms_per_user: 100,
            invite_base_url: None,
            max_invites_per_room: 50,
        }
    }
}

impl MucSection {
    /// The service's domain for the server domain `domain`.
    pub fn service_domain(&self, domain: &str) -> String {
        format!("{}.{domain}", self.subdomain)
    }

    /// The URL of an invite link.
    pub fn invite_url(&self, domain: &str, token: &str) -> String {
        match &self.invite_base_url {
            Some(base) => format!("{base}{token}"),
            None => format!("https://{domain}/join/{token}"),
        }
    }
}

/// The inbox log: how long devices and messages are kept.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliverySection {
    /// Days after which a device (a resource that logged in) unused since is
    /// forgotten, so one-off resources don't hold the log forever.
    pub forget_devices_after_days: u32,
    /// How long messages stay in the log (and so in the archive).
    pub retention: Retention,
    /// For `retention = "days"`: how many.
    pub retention_days: u32,
}

/// The message archive (XEP-0313) of 1:1 chats.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveSection {
    /// Off: the inbox log only delivers. No archive (no MAM, no full-text
    /// search, no XEP-0359 stanza ids), no copy of what a user sends, and
    /// messages leave the log once every device of the recipient has them (as
    /// `retention = "until-delivered"`). Groups keep their room history.
    pub enabled: bool,
}

impl Default for ArchiveSection {
    fn default() -> Self {
        ArchiveSection { enabled: true }
    }
}

/// Archive retention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Retention {
    /// Keep every message.
    Forever,
    /// Keep messages for `retention_days`.
    Days,
    /// WhatsApp's privacy mode: delete a message once every device of its owner
    /// has received it.
    UntilDelivered,
}

impl Default for DeliverySection {
    fn default() -> Self {
        DeliverySection {
            forget_devices_after_days: 30,
            retention: Retention::Forever,
            retention_days: 30,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// The XMPP domain users live on (`user@domain`).
    pub domain: String,
    /// Where the SQLite database, generated certificates and media live.
    pub data_dir: PathBuf,
}

/// Listener addresses; an empty string disables that listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenSection {
    pub c2s: String,
    pub c2s_tls: String,
    /// c2s without TLS (no STARTTLS offered, SCRAM only): for a TLS-terminating
    /// proxy on the same host, or a benchmark. Loopback addresses only; off (empty)
    /// by default.
    pub c2s_plain: String,
    pub http: String,
    pub https: String,
    /// STUN for calls (RFC 8489, UDP): devices learn their public address.
    pub stun: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM certificate chain. When unset, a local CA and a certificate for the domain
    /// are generated into `data_dir/tls/` on first start and reused afterwards.
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
    /// Seconds between looks at the certificate's files: when they changed (a
    /// renewal), new connections get the new one. 0: only on SIGHUP.
    pub reload_check_secs: u64,
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            cert: None,
            key: None,
            reload_check_secs: 60,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// `sqlite://path` or `postgres://user:pass@host/db`; default: `data_dir/kith.db`.
    pub url: Option<String>,
    pub max_connections: u32,
}

/// A way to create an account.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SignupMethod {
    /// Phone number + SMS code (`POST /api/v1/register/*`).
    Phone,
    /// Username + password: XEP-0077 in-band registration.
    Password,
    /// Email address + emailed code (`POST /api/v1/register/email/*`).
    Email,
}

impl SignupMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            SignupMethod::Phone => "phone",
            SignupMethod::Password => "password",
            SignupMethod::Email => "email",
        }
    }
}

/// The SMTP relay that sends email sign-up codes.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpSection {
    pub host: String,
    pub port: u16,
    /// The sender address; default `kith@<domain>`.
    pub from: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// Require STARTTLS (rustls, verified against the system's roots). Off only
    /// for a relay on loopback.
    pub starttls: bool,
    pub timeout_secs: u64,
}

impl Default for SmtpSection {
    fn default() -> Self {
        SmtpSection {
            host: "localhost".to_owned(),
            port: 587,
            from: None,
            username: None,
            password: None,
            starttls: true,
            timeout_secs: 10,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationSection {
    /// XEP-0077 in-band registration. Defaults to on only for the `localhost` domain.
    /// The older switch for the `password` method; `methods` supersedes it.
    pub enabled: Option<bool>,
    /// The sign-up methods allowed. Unset: `phone` (when `[phone] enabled`) and
    /// `password` (per `enabled`, so on for `localhost` only); `email` only when listed.
    pub methods: Option<Vec<SignupMethod>>,
    /// Accounts one source IP may create per hour.
    pub max_per_ip_per_hour: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Largest stanza accepted, in bytes, enforced while parsing.
    pub max_stanza_size: usize,
    /// Seconds a connection may take to authenticate.
    pub auth_timeout_secs: u64,
    /// Seconds of silence after which an authenticated connection is pinged, then
    /// closed if it stays silent for as long again.
    pub idle_timeout_secs: u64,
    /// Failed SASL attempts allowed on one stream before it is closed.
    pub max_auth_failures: u32,
    /// Resources (sessions) one account may bind at once.
    pub max_sessions_per_user: usize,
    /// Contacts one roster may hold (its items other than unanswered requests).
    pub max_roster_items: usize,
    /// Unanswered inbound subscription requests one account keeps (each is a
    /// row a stranger makes; bounded apart, so strangers cannot use up the
    /// room for contacts).
    pub max_roster_requests: usize,
    /// Stanzas queued for one session before it is considered too slow and closed.
    pub session_queue: usize,
    /// Simultaneous connections accepted from one IP address.
    pub max_connections_per_ip: usize,
    /// Seconds a session with XEP-0198 stream management waits to be resumed after
    /// its connection drops; 0 disables resumption.
    pub resume_timeout_secs: u64,
    /// How long an XEP-0484 FAST token (a client's one-round-trip login
    /// after a password login) stays valid; 0: FAST is not offered.
    pub fast_token_secs: u64,
    /// How old a FAST token may get before a login with it brings the client
    /// a new one (XEP-0484 §3.5).
    pub fast_rotate_secs: u64,
    /// How long a client may go on signing in with FAST tokens alone after
    /// its last password (or device credential) login: tokens issued in
    /// between expire by then; 0: no limit.
    pub fast_chain_secs: u64,
}

/// The web client (`web/`, embedded in the binary) served at `/` on HTTP(S).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSection {
    /// Serve the web client; when off, `/` answers 404 (WebSocket and API stay).
    pub enabled: bool,
}

impl Default for WebSection {
    fn default() -> Self {
        WebSection { enabled: true }
    }
}

/// Calls: where devices find STUN and TURN (XEP-0215, `features::calls`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CallsSection {
    /// Answer XEP-0215 service discovery.
    pub enabled: bool,
    /// The host name devices reach `[listen] stun` at; default: the domain.
    pub stun_host: Option<String>,
    /// An external TURN server (RFC 8656, e.g. coturn) that relays media when
    /// no direct path exists: its host name. Needs `turn_secret`.
    pub turn_host: Option<String>,
    pub turn_port: u16,
    /// Which of "udp" and "tcp" the TURN server takes.
    pub turn_transports: Vec<String>,
    /// The secret TURN credentials are made from: shared with the external
    /// TURN server (coturn: `use-auth-secret`, `static-auth-secret`), or kith's
    /// own relay's (the same on every node of a cluster, and kept across
    /// restarts, so that credentials handed out go on working; unset: a new
    /// random one at each start). Each user gets a time-limited username and
    /// password made from it, never the secret.
    pub turn_secret: Option<String>,
    /// How long a TURN credential works.
    pub credential_ttl_secs: u64,
    /// Relay media (TURN) on the STUN listener when no `turn_host` is set.
    pub relay: bool,
    /// The address relayed media leaves from and devices are told: this
    /// host's public address. Default: the STUN listener's, when it names one
    /// (not 0.0.0.0); without either there is no relay.
    pub relay_ip: Option<std::net::IpAddr>,
    /// Relay to and from loopback and private addresses too (a LAN-only
    /// deployment, or tests). Off: such peers are refused.
    pub relay_allow_private: bool,
    /// Most relayed addresses at once (each a UDP socket).
    pub max_relays: usize,
}

impl Default for CallsSection {
    fn default() -> Self {
        CallsSection {
            enabled: true,
            stun_host: None,
            turn_host: None,
            turn_port: 3478,
            turn_transports: vec!["udp".to_owned(), "tcp".to_owned()],
            turn_secret: None,
            credential_ttl_secs: 86_400,
            relay: true,
            relay_ip: None,
            relay_allow_private: false,
            max_relays: 1_000,
        }
    }
}

/// Prometheus metrics at `/metrics` on the HTTP(S) listeners (`metrics.rs`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    pub enabled: bool,
    /// Unset: only loopback addresses may read them (a scraper on the same
    /// host; behind a reverse proxy on the same host every request is from
    /// loopback, so set a token there). Set: any address that sends
    /// `Authorization: Bearer <token>` (Prometheus's `authorization`
    /// credentials), and no other.
    pub token: Option<String>,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection {
            enabled: true,
            token: None,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// `tracing` filter, e.g. `info` or `kith_server=debug,info`. `RUST_LOG` wins.
    pub level: String,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            domain: "localhost".to_owned(),
            data_dir: PathBuf::from("kith-data"),
        }
    }
}

impl Default for ListenSection {
    fn default() -> Self {
        ListenSection {
            c2s: "0.0.0.0:5222".to_owned(),
            c2s_tls: "0.0.0.0:5223".to_owned(),
            c2s_plain: String::new(),
            http: "0.0.0.0:5280".to_owned(),
            https: "0.0.0.0:5443".to_owned(),
            stun: "0.0.0.0:3478".to_owned(),
        }
    }
}

impl Default for StorageSection {
    fn default() -> Self {
        StorageSection {
            url: None,
            max_connections: 10,
        }
    }
}

impl Default for RegistrationSection {
    fn default() -> Self {
        RegistrationSection {
            enabled: None,
            methods: None,
            max_per_ip_per_hour: 10,
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_stanza_size: 256 * 1024,
            auth_timeout_secs: 30,
            idle_timeout_secs: 300,
            max_auth_failures: 5,
            max_sessions_per_user: 32,
            max_roster_items: 5_000,
            max_roster_requests: 500,
            session_queue: 1024,
            max_connections_per_ip: 10_000,
            resume_timeout_secs: 300,
            fast_token_secs: 21 * 24 * 3600,
            fast_rotate_secs: 24 * 3600,
            fast_chain_secs: 90 * 24 * 3600,
        }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            level: "info".to_owned(),
        }
    }
}

/// A configuration problem, located in the file where possible.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

impl Config {
    /// Reads and validates a TOML file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates TOML text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|error| {
            let (line, column) = error
                .span()
                .map(|span| line_and_column(text, span.start))
                .unwrap_or((0, 0));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: error.message().to_owned(),
            }
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message,
        };
        if kith_proto::BareJid::new(&self.server.domain).map_or(true, |jid| jid.node().is_some()) {
            return Err(invalid(
                "server.domain",
                format!("{:?} is not a valid domain", self.server.domain),
            ));
        }
        for (key, value) in [
            ("listen.c2s", &self.listen.c2s),
            ("listen.c2s_tls", &self.listen.c2s_tls),
            ("listen.c2s_plain", &self.listen.c2s_plain),
            ("listen.http", &self.listen.http),
            ("listen.https", &self.listen.https),
            ("listen.stun", &self.listen.stun),
        ] {
            if !value.is_empty() && value.parse::<SocketAddr>().is_err() {
                return Err(invalid(
                    key,
                    format!("{value:?} is not an address like 0.0.0.0:5222"),
                ));
            }
        }
        // Streams without TLS never leave the host.
        if let Ok(addr) = self.listen.c2s_plain.parse::<SocketAddr>()
            && !addr.ip().is_loopback()
        {
            return Err(invalid(
                "listen.c2s_plain",
                format!(
                    "{addr} is not a loopback address: c2s without TLS only listens on this host"
                ),
            ));
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return Err(invalid(
                "tls.cert",
                "tls.cert and tls.key must be set together".to_owned(),
            ));
        }
        if let Some(url) = &self.storage.url
            && !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
        {
            return Err(invalid(
                "storage.url",
                "must start with sqlite: or postgres://".to_owned(),
            ));
        }
        // Nodes share the store: a SQLite file is one process's (its writer and
        // the log's tail assume they are the only one).
        if self.cluster.nats.is_some() && !self.storage_url().starts_with("postgres") {
            return Err(invalid(
                "cluster.nats",
                "a cluster needs a shared PostgreSQL store (storage.url = \"postgres://...\")"
                    .to_owned(),
            ));
        }
        if self.calls.turn_host.is_some() && self.calls.turn_secret.is_none() {
            return Err(invalid(
                "calls.turn_secret",
                "calls.turn_host needs the secret it shares with kith".to_owned(),
            ));
        }
        if self
            .calls
            .turn_secret
            .as_deref()
            .is_some_and(|s| s.len() < 16)
        {
            return Err(invalid(
                "calls.turn_secret",
                "must be at least 16 characters".to_owned(),
            ));
        }
        if let Some(transport) = self
            .calls
            .turn_transports
            .iter()
            .find(|t| !matches!(t.as_str(), "udp" | "tcp"))
        {
            return Err(invalid(
                "calls.turn_transports",
                format!("{transport:?} is neither \"udp\" nor \"tcp\""),
            ));
        }
        if !(60..=7 * 86_400).contains(&self.calls.credential_ttl_secs) {
            return Err(invalid(
                "calls.credential_ttl_secs",
                "must be between 60 and 604800 (a week)".to_owned(),
            ));
        }
        if self.metrics.token.as_deref().is_some_and(|t| t.len() < 16) {
            return Err(invalid(
                "metrics.token",
                "must be at least 16 characters (or unset: loopback only)".to_owned(),
            ));
        }
        // Any frame NATS takes (1 MiB by default) must fit, or it could never go.
        if self.cluster.max_outbox_bytes < 1 << 20 {
            return Err(invalid(
                "cluster.max_outbox_bytes",
                "must be at least 1048576 bytes (NATS's largest message by default)".to_owned(),
            ));
        }
        if self.limits.max_stanza_size < 10_000 {
            return Err(invalid(
                "limits.max_stanza_size",
                "must be at least 10000 bytes (RFC 6120 §13.12)".to_owned(),
            ));
        }
        if self.delivery.retention == Retention::Days && self.delivery.retention_days == 0 {
            return Err(invalid(
                "delivery.retention_days",
                "must be at least 1".to_owned(),
            ));
        }
        if self.muc.subdomain.is_empty()
            || kith_proto::BareJid::new(&self.muc.service_domain(&self.server.domain)).is_err()
        {
            return Err(invalid(
                "muc.subdomain",
                "must make a valid domain name".to_owned(),
            ));
        }
        if self.muc.max_members == 0 || self.muc.max_occupants == 0 {
            return Err(invalid(
                "muc.max_members",
                "muc.max_members and muc.max_occupants must be positive".to_owned(),
            ));
        }
        self.push
            .validate()
            .map_err(|(key, message)| invalid(key, message))?;
        self.sms
            .validate()
            .map_err(|(key, message)| invalid(key, message))?;
        if let Some(region) = &self.phone.default_region
            && region.parse::<phonenumber::country::Id>().is_err()
        {
            return Err(invalid(
                "phone.default_region",
                format!("{region:?} is not an ISO 3166 region code"),
            ));
        }
        if self.phone.max_code_failures == 0 || self.phone.code_ttl_secs == 0 {
            return Err(invalid(
                "phone.max_code_failures",
                "phone.max_code_failures and phone.code_ttl_secs must be positive".to_owned(),
            ));
        }
        self.pep
            .validate()
            .map_err(|(key, message)| invalid(key, message))?;
        self.upload
            .validate()
            .map_err(|(key, message)| invalid(key, message))?;
        if self
            .smtp_from(&self.server.domain)
            .parse::<lettre::message::Mailbox>()
            .is_err()
        {
            return Err(invalid(
                "smtp.from",
                "not an email address (e.g. \"kith <kith@example.org>\")".to_owned(),
            ));
        }
        if let (Some(methods), Some(enabled)) =
            (&self.registration.methods, self.registration.enabled)
            && methods.contains(&SignupMethod::Password) != enabled
        {
            return Err(invalid(
                "registration.methods",
                "registration.enabled contradicts \"password\" in registration.methods \
                 (set only methods)"
                    .to_owned(),
            ));
        }
        if self.registration.methods.is_some()
            && self.signup_allowed(SignupMethod::Phone)
            && !self.phone.enabled
        {
            return Err(invalid(
                "registration.methods",
                "\"phone\" sign-up needs [phone] enabled = true".to_owned(),
            ));
        }
        for (key, value) in [
            ("limits.session_queue", self.limits.session_queue),
            (
                "limits.max_sessions_per_user",
                self.limits.max_sessions_per_user,
            ),
            ("limits.max_roster_items", self.limits.max_roster_items),
            (
                "limits.max_roster_requests",
                self.limits.max_roster_requests,
            ),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be positive".to_owned()));
            }
        }
        Ok(())
    }

    /// XEP-0077 in-band registration (the `password` sign-up method).
    pub fn registration_enabled(&self) -> bool {
        self.signup_allowed(SignupMethod::Password)
    }

    /// How long messages stay in the log: without an archive, until delivered.
    pub fn retention(&self) -> Retention {
        if self.archive.enabled {
            self.delivery.retention
        } else {
            Retention::UntilDelivered
        }
    }

    /// The sender of sign-up mail.
    pub fn smtp_from(&self, domain: &str) -> String {
        self.smtp
            .from
            .clone()
            .unwrap_or_else(|| format!("kith@{domain}"))
    }

    /// Whether new accounts may be created with `method`.
    pub fn signup_allowed(&self, method: SignupMethod) -> bool {
        match &self.registration.methods {
            Some(methods) => methods.contains(&method),
            None => match method {
                SignupMethod::Phone => self.phone.enabled,
                SignupMethod::Password => self
                    .registration
                    .enabled
                    .unwrap_or(self.server.domain == "localhost"),
                SignupMethod::Email => false,
            },
        }
    }

    /// The allowed sign-up methods, in a stable order (for `GET /register/methods`).
    pub fn signup_methods(&self) -> Vec<SignupMethod> {
        [
            SignupMethod::Phone,
            SignupMethod::Password,
            SignupMethod::Email,
        ]
        .into_iter()
        .filter(|method| self.signup_allowed(*method))
        .collect()
    }

    pub fn storage_url(&self) -> String {
        match &self.storage.url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}",
                self.server.data_dir.join("kith.db").display()
            ),
        }
    }
}

fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let config = Config::parse("", Path::new("k.toml")).expect("valid");
        assert_eq!(config.server.domain, "localhost");
        assert!(config.registration_enabled());
        assert_eq!(config.limits.max_stanza_size, 262_144);
    }

    #[test]
    fn signup_methods_switch() {
        let config = Config::parse("", Path::new("k.toml")).expect("valid");
        assert_eq!(
            config.signup_methods(),
            [SignupMethod::Phone, SignupMethod::Password]
        );
        let config = Config::parse("[server]\ndomain = \"example.org\"\n", Path::new("k.toml"))
            .expect("valid");
        assert_eq!(config.signup_methods(), [SignupMethod::Phone]);
        let config = Config::parse(
            "[registration]\nmethods = [\"email\", \"password\"]\n",
            Path::new("k.toml"),
        )
        .expect("valid");
        assert_eq!(
            config.signup_methods(),
            [SignupMethod::Password, SignupMethod::Email]
        );
        assert!(!config.signup_allowed(SignupMethod::Phone));
        for (text, key) in [
            (
                "[registration]\nmethods = []\nenabled = true\n",
                "registration.methods",
            ),
            (
                "[registration]\nmethods = [\"phone\"]\n[phone]\nenabled = false\n",
                "registration.methods",
            ),
            ("[registration]\nmethods = [\"fax\"]\n", "k.toml:2:"),
        ] {
            let error = Config::parse(text, Path::new("k.toml")).expect_err(text);
            assert!(error.to_string().contains(key), "{text}: {error}");
        }
    }

    #[test]
    fn sms_senders_need_their_settings() {
        for (text, key) in [
            ("[sms]\nsender = \"webhook\"\n", "sms.webhook_url"),
            (
                "[sms]\nsender = \"webhook\"\nwebhook_url = \"http://x/\"\n",
                "sms.webhook_secret",
            ),
            ("[sms]\nsender = \"twilio\"\n", "sms.twilio_account_sid"),
            ("[sms]\nsender = \"carrier-pigeon\"\n", "k.toml:2:"),
            ("[phone]\ndefault_region = \"XX\"\n", "phone.default_region"),
        ] {
            let error = Config::parse(text, Path::new("k.toml")).expect_err(text);
            assert!(error.to_string().contains(key), "{text}: {error}");
        }
        let config = Config::parse(
            "[sms]\nsender = \"twilio\"\ntwilio_account_sid = \"AC1\"\ntwilio_auth_token = \"t\"\ntwilio_from = \"+15005550006\"\n[phone]\ndefault_region = \"DE\"\n",
            Path::new("k.toml"),
        )
        .expect("valid");
        assert_eq!(config.sms.sender, SmsSender::Twilio);
    }

    #[test]
    fn c2s_without_tls_listens_on_loopback_only() {
        for addr in ["0.0.0.0:5224", "192.0.2.1:5224", "[::]:5224"] {
            let text = format!("[listen]\nc2s_plain = \"{addr}\"\n");
            let error = Config::parse(&text, Path::new("k.toml")).expect_err(&text);
            assert!(
                error.to_string().contains("listen.c2s_plain"),
                "{text}: {error}"
            );
        }
        for addr in ["127.0.0.1:5224", "[::1]:5224"] {
            let text = format!("[listen]\nc2s_plain = \"{addr}\"\n");
            let config = Config::parse(&text, Path::new("k.toml")).expect(&text);
            assert_eq!(config.listen.c2s_plain, addr);
        }
        let config = Config::parse("", Path::new("k.toml")).expect("defaults");
        assert_eq!(config.listen.c2s_plain, "", "off by default");
    }

    #[test]
    fn a_cluster_needs_a_shared_store() {
        const NATS: &str = "[cluster]\nnats = \"nats://127.0.0.1:4222\"\n";
        const PG: &str = "[storage]\nurl = \"postgres://kith@db/kith\"\n";
        let text = NATS.to_owned();
        let error = Config::parse(&text, Path::new("k.toml")).expect_err(&text);
        assert!(
            error.to_string().contains("cluster.nats"),
            "{text}: {error}"
        );
        // Groups span nodes (`cluster::groups`).
        let text = format!("{NATS}{PG}");
        let config = Config::parse(&text, Path::new("k.toml")).expect(&text);
        assert_eq!(
            config.cluster.nats.as_deref(),
            Some("nats://127.0.0.1:4222")
        );
        let config = Config::parse("", Path::new("k.toml")).expect("defaults");
        assert!(config.cluster.nats.is_none(), "one node by default");
        assert_eq!(config.cluster.max_outbox_bytes, 64 << 20);
        // An outbox smaller than a frame NATS takes.
        let text = format!("{NATS}max_outbox_bytes = 4096\n{PG}");
        let error = Config::parse(&text, Path::new("k.toml")).expect_err(&text);
        assert!(
            error.to_string().contains("cluster.max_outbox_bytes"),
            "{error}"
        );
    }

    #[test]
    fn unknown_key_reports_line() {
        let error = Config::parse(
            "[server]\ndomain = \"a.example\"\ndomian = \"x\"\n",
            Path::new("k.toml"),
        )
        .expect_err("typo refused");
        let text = error.to_string();
        assert!(text.starts_with("k.toml:3:"), "{text}");
        assert!(text.contains("domian"), "{text}");
    }

    #[test]
    fn wrong_type_reports_line() {
        let error = Config::parse(
            "[limits]\n\nmax_stanza_size = \"big\"\n",
            Path::new("k.toml"),
        )
        .expect_err("type refused");
        assert!(error.to_string().starts_with("k.toml:3:"), "{error}");
    }

    #[test]
    fn a_zero_limit_names_its_own_key() {
        for key in ["max_roster_items", "max_roster_requests", "session_queue"] {
            let error = Config::parse(&format!("[limits]\n{key} = 0\n"), Path::new("k.toml"))
                .expect_err("refused");
            assert!(
                error.to_string().contains(&format!("limits.{key}")),
                "{error}"
            );
        }
    }

    #[test]
    fn invalid_values_name_the_key() {
        let error = Config::parse("[listen]\nc2s = \"nowhere\"\n", Path::new("k.toml"))
            .expect_err("refused");
        assert!(error.to_string().contains("listen.c2s"), "{error}");
        let error = Config::parse("[server]\ndomain = \"a@b\"\n", Path::new("k.toml"))
            .expect_err("refused");
        assert!(error.to_string().contains("server.domain"), "{error}");
    }

    #[test]
    fn pep_limits_parse_and_are_checked() {
        // Small stanzas with the default avatar limit are fine (the stanza limit wins).
        let config = Config::parse(
            "[limits]\nmax_stanza_size = 65536\n[pep]\nmax_nodes_per_user = 3\n",
            Path::new("k.toml"),
        )
        .expect("valid");
        assert_eq!(config.pep.max_nodes_per_user, 3);
        assert_eq!(config.pep.max_items_per_node, 100);
        let error = Config::parse("[pep]\nmax_items_per_node = 0\n", Path::new("k.toml"))
            .expect_err("refused");
        assert!(
            error.to_string().contains("pep.max_items_per_node"),
            "{error}"
        );
    }

    #[test]
    fn without_an_archive_messages_stay_until_delivered() {
        let config: Config =
            toml::from_str("[delivery]\nretention = \"forever\"\n[archive]\nenabled = false\n")
                .expect("parses");
        assert!(!config.archive.enabled);
        assert_eq!(config.retention(), Retention::UntilDelivered);
        assert!(Config::default().archive.enabled);
        assert_eq!(Config::default().retention(), Retention::Forever);
    }

    #[test]
    fn retention_modes_parse() {
        let config = Config::parse(
            "[delivery]\nretention = \"until-delivered\"\n",
            Path::new("k.toml"),
        )
        .expect("valid");
        assert_eq!(config.delivery.retention, Retention::UntilDelivered);
        let error = Config::parse(
            "[delivery]\nretention = \"sometimes\"\n",
            Path::new("k.toml"),
        )
        .expect_err("refused");
        assert!(error.to_string().starts_with("k.toml:2:"), "{error}");
    }

    #[test]
    fn push_webhook_needs_a_secret_and_a_url() {
        let error = Config::parse(
            "[push]\nwebhook_url = \"https://relay.example/hook\"\n",
            Path::new("k.toml"),
        )
        .expect_err("refused");
        assert!(error.to_string().contains("push.webhook_secret"), "{error}");
        let error = Config::parse(
            "[push]\nwebhook_url = \"relay\"\nwebhook_secret = \"s\"\n",
            Path::new("k.toml"),
        )
        .expect_err("refused");
        assert!(error.to_string().contains("push.webhook_url"), "{error}");
        let config = Config::parse(
            "[push]\nwebhook_url = \"https://relay.example/hook\"\nwebhook_secret = \"s\"\n",
            Path::new("k.toml"),
        )
        .expect("valid");
        assert!(!config.push.include_body);
        assert_eq!(
            config.push.vapid_subject_for("chat.example"),
            "mailto:postmaster@chat.example"
        );
    }

    #[test]
    fn upload_limits_are_checked() {
        let config = Config::parse("", Path::new("k.toml")).expect("valid");
        assert_eq!(config.upload.max_file_size, 100 * 1024 * 1024);
        assert_eq!(config.upload.backend, UploadBackend::Fs);
        let error = Config::parse(
            "[upload]\nmax_file_size = 3000000000\n",
            Path::new("k.toml"),
        )
        .expect_err("over 2 GiB refused");
        assert!(
            error.to_string().contains("upload.max_file_size"),
            "{error}"
        );
        let error = Config::parse("[upload]\nbackend = \"s3\"\n", Path::new("k.toml"))
            .expect_err("bucket needed");
        assert!(error.to_string().contains("upload.s3_bucket"), "{error}");
        let error = Config::parse(
            "[upload]\nallowed_types = [\"image\"]\n",
            Path::new("k.toml"),
        )
        .expect_err("bad type refused");
        assert!(
            error.to_string().contains("upload.allowed_types"),
            "{error}"
        );
    }

    #[test]
    fn the_example_config_is_valid() {
        let text = include_str!("../../../kith.example.toml");
        Config::parse(text, Path::new("kith.example.toml")).expect("example config is valid");
    }
}
