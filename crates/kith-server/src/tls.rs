//! TLS set-up (RFC 7590): certificates from configured PEM files, or a generated
//! local CA plus a server certificate for zero-set-up development.
//!
//! The generated material lives in `data_dir/tls/` and is reused across restarts:
//! `ca.pem` is the trust anchor to give clients, `cert.pem`/`key.pem` are what the
//! server presents. rustls offers only TLS 1.2 and 1.3 with forward-secret AEAD
//! suites, which is what RFC 7590 §3.1 asks of XMPP.
//!
//! The certificate is read again without a restart ([`Certificate::reload`]):
//! on SIGHUP, and when its files change (a renewal), checked every
//! `[tls] reload_check_secs`. New handshakes get the new one; open connections keep
//! theirs. Files that don't make a certificate leave the current one in place.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use anyhow::{Context, Result};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Config;

/// ALPN protocol id for XMPP client connections over direct TLS (XEP-0368 §3).
pub const ALPN_XMPP_CLIENT: &[u8] = b"xmpp-client";

/// Paths of the certificate and key the server presents.
#[derive(Clone, Debug)]
pub struct CertificatePaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The generated CA certificate, when kith made its own.
    pub ca: Option<PathBuf>,
}

/// Finds the configured certificate, or makes (once) a local CA and a certificate for
/// the domain, `localhost` and the loopback addresses.
pub fn ensure_certificate(config: &Config) -> Result<CertificatePaths> {
    if let (Some(cert), Some(key)) = (&config.tls.cert, &config.tls.key) {
        return Ok(CertificatePaths {
            cert: cert.clone(),
            key: key.clone(),
            ca: None,
        });
    }
    let dir = config.server.data_dir.join("tls");
    let paths = CertificatePaths {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
        ca: Some(dir.join("ca.pem")),
    };
    if paths.cert.exists() && paths.key.exists() {
        return Ok(paths);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    generate(&config.server.domain, &paths)?;
    tracing::info!(ca = %dir.join("ca.pem").display(), "generated a local CA and server certificate");
    Ok(paths)
}

pub(crate) fn generate(domain: &str, paths: &CertificatePaths) -> Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("kith local CA for {domain}"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let mut names = vec![domain.to_owned(), format!("*.{domain}")];
    for extra in ["localhost", "127.0.0.1", "::1"] {
        if !names.iter().any(|n| n == extra) {
            names.push(extra.to_owned());
        }
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names)?;
    params.distinguished_name.push(DnType::CommonName, domain);
    let issuer = Issuer::new(ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer)?;

    let ca_path = paths.ca.as_deref().unwrap_or(Path::new("ca.pem"));
    write_private(&paths.key, key.serialize_pem().as_bytes())?;
    std::fs::write(ca_path, ca_cert.pem())?;
    // The chain the server presents: leaf first, then the CA.
    std::fs::write(&paths.cert, format!("{}{}", cert.pem(), ca_cert.pem()))?;
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("writing {}", path.display()))?;
        file.write_all(bytes)?;
        Ok(())
    }
    #[cfg(not(unix))]
    {
        std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
    }
}

/// The certificate and key every TLS listener presents, replaceable while the
/// server runs.
#[derive(Debug)]
pub struct Certificate {
    paths: CertificatePaths,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' modification times when they were last read.
    read_at: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl Certificate {
    /// Reads the certificate and key at `paths`.
    pub fn load(paths: &CertificatePaths) -> Result<Arc<Certificate>> {
        let provider = ServerConfig::builder().crypto_provider().clone();
        let read_at = modified(paths);
        let current = certified_key(paths, &provider)?;
        Ok(Arc::new(Certificate {
            paths: paths.clone(),
            provider,
            current: RwLock::new(Arc::new(current)),
            read_at: Mutex::new(read_at),
        }))
    }

    /// Reads the files again: new handshakes present what they hold. On an
    /// error the current certificate stays.
    pub fn reload(&self) -> Result<()> {
        let read_at = modified(&self.paths);
        let fresh = certified_key(&self.paths, &self.provider)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        *self.read_at.lock().unwrap_or_else(|e| e.into_inner()) = read_at;
        Ok(())
    }

    /// Reloads if either file changed since it was last read; whether it did.
    pub fn reload_if_changed(&self) -> Result<bool> {
        let now = modified(&self.paths);
        if *self.read_at.lock().unwrap_or_else(|e| e.into_inner()) == now {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }
}

impl ResolvesServerCert for Certificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

/// When the certificate and key files were last modified (`None`: unreadable).
fn modified(paths: &CertificatePaths) -> (Option<SystemTime>, Option<SystemTime>) {
    let at = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    (at(&paths.cert), at(&paths.key))
}

/// The certificate chain and key at `paths`, checked to belong together.
fn certified_key(paths: &CertificatePaths, provider: &CryptoProvider) -> Result<CertifiedKey> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&paths.cert)
        .with_context(|| format!("reading {}", paths.cert.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("parsing {}", paths.cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{} holds no certificate",
        paths.cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(&paths.key)
        .with_context(|| format!("reading the private key {}", paths.key.display()))?;
    CertifiedKey::from_der(certs, key, provider).context("certificate and key do not match")
}

/// Builds the rustls configuration presenting `certificate`; `alpn` lists the
/// ALPN protocols to accept (empty: no ALPN).
pub fn server_config(certificate: &Arc<Certificate>, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>> {
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(certificate.clone());
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // AWS-LC seeds its random generator from CPU timing jitter the first time
    // anything asks it for randomness (≈ 65 ms of CPU, once per process): done
    // here, at start, rather than inside the first client's handshake.
    config
        .crypto_provider()
        .secure_random
        .fill(&mut [0u8; 16])
        .map_err(|_| anyhow::anyhow!("the TLS random generator failed"))?;
    Ok(Arc::new(config))
}
