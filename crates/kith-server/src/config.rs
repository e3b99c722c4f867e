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
    pub log: LogSection,
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
    fn the_example_config_is_valid() {
        let text = include_str!("../../../kith.example.toml");
        Config::parse(text, Path::new("kith.example.toml")).expect("example config is valid");
    }
}
