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
    pub push: PushSection,
    pub muc: MucSection,
    pub log: LogSection,
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
    pub http: String,
    pub https: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSection {
    /// PEM certificate chain. When unset, a local CA and a certificate for the domain
    /// are generated into `data_dir/tls/` on first start and reused afterwards.
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSection {
    /// `sqlite://path` or `postgres://user:pass@host/db`; default: `data_dir/kith.db`.
    pub url: Option<String>,
    pub max_connections: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistrationSection {
    /// XEP-0077 in-band registration. Defaults to on only for the `localhost` domain.
    pub enabled: Option<bool>,
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
    /// Stanzas queued for one session before it is considered too slow and closed.
    pub session_queue: usize,
    /// Simultaneous connections accepted from one IP address.
    pub max_connections_per_ip: usize,
    /// Seconds a session with XEP-0198 stream management waits to be resumed after
    /// its connection drops; 0 disables resumption.
    pub resume_timeout_secs: u64,
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
            http: "0.0.0.0:5280".to_owned(),
            https: "0.0.0.0:5443".to_owned(),
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
            session_queue: 1024,
            max_connections_per_ip: 10_000,
            resume_timeout_secs: 300,
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
            ("listen.http", &self.listen.http),
            ("listen.https", &self.listen.https),
        ] {
            if !value.is_empty() && value.parse::<SocketAddr>().is_err() {
                return Err(invalid(
                    key,
                    format!("{value:?} is not an address like 0.0.0.0:5222"),
                ));
            }
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
        if self.limits.session_queue == 0 || self.limits.max_sessions_per_user == 0 {
            return Err(invalid(
                "limits.session_queue",
                "limits must be positive".to_owned(),
            ));
        }
        Ok(())
    }

    pub fn registration_enabled(&self) -> bool {
        self.registration
            .enabled
            .unwrap_or(self.server.domain == "localhost")
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
    fn invalid_values_name_the_key() {
        let error = Config::parse("[listen]\nc2s = \"nowhere\"\n", Path::new("k.toml"))
            .expect_err("refused");
        assert!(error.to_string().contains("listen.c2s"), "{error}");
        let error = Config::parse("[server]\ndomain = \"a@b\"\n", Path::new("k.toml"))
            .expect_err("refused");
        assert!(error.to_string().contains("server.domain"), "{error}");
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
    fn the_example_config_is_valid() {
        let text = include_str!("../../../kith.example.toml");
        Config::parse(text, Path::new("kith.example.toml")).expect("example config is valid");
    }
}
