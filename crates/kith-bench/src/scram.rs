//! The client side of SASL SCRAM (RFC 5802, RFC 7677) and PLAIN (RFC 4616).
//!
//! kith-proto holds only the server side; a load generator needs the client side.
//! The PBKDF2 step dominates a login's client CPU, so salted passwords are cached by
//! (user, salt, iterations): a scenario that logs the same users in again, or a
//! second run with `--scram-cache FILE`, does not pay for it again. The server's work
//! is the same either way.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    Sha1,
    Sha256,
}

impl Hash {
    pub fn mechanism(self) -> &'static str {
        match self {
            Hash::Sha1 => "SCRAM-SHA-1",
            Hash::Sha256 => "SCRAM-SHA-256",
        }
    }

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        // HMAC takes keys of any length: `new_from_slice` cannot fail.
        match self {
            Hash::Sha1 => Hmac::<Sha1>::new_from_slice(key)
                .map(|mut m| {
                    m.update(data);
                    m.finalize().into_bytes().to_vec()
                })
                .unwrap_or_default(),
            Hash::Sha256 => Hmac::<Sha256>::new_from_slice(key)
                .map(|mut m| {
                    m.update(data);
                    m.finalize().into_bytes().to_vec()
                })
                .unwrap_or_default(),
        }
    }

    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha1 => Sha1::digest(data).to_vec(),
            Hash::Sha256 => Sha256::digest(data).to_vec(),
        }
    }

    fn salted(self, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            Hash::Sha1 => {
                pbkdf2::pbkdf2_hmac_array::<Sha1, 20>(password.as_bytes(), salt, iterations)
                    .to_vec()
            }
            Hash::Sha256 => {
                pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password.as_bytes(), salt, iterations)
                    .to_vec()
            }
        }
    }
}

type CacheKey = (String, Vec<u8>, u32, bool);
static CACHE: Mutex<Option<HashMap<CacheKey, Vec<u8>>>> = Mutex::new(None);

fn cached_salted(hash: Hash, user: &str, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
    let key = (
        user.to_owned(),
        salt.to_vec(),
        iterations,
        hash == Hash::Sha1,
    );
    if let Ok(guard) = CACHE.lock()
        && let Some(found) = guard.as_ref().and_then(|m| m.get(&key))
    {
        return found.clone();
    }
    let salted = hash.salted(password, salt, iterations);
    if let Ok(mut guard) = CACHE.lock() {
        guard
            .get_or_insert_with(HashMap::new)
            .insert(key, salted.clone());
    }
    salted
}

/// Loads a cache written by [`save_cache`]; a missing file is an empty cache.
pub fn load_cache(path: &Path) -> Result<usize> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(0);
    };
    let mut map = HashMap::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split(' ').collect();
        if parts.len() != 5 {
            continue;
        }
        let (Ok(salt), Ok(iterations), Ok(salted)) = (
            B64.decode(parts[1]),
            parts[2].parse::<u32>(),
            B64.decode(parts[4]),
        ) else {
            continue;
        };
        map.insert(
            (parts[0].to_owned(), salt, iterations, parts[3] == "1"),
            salted,
        );
    }
    let n = map.len();
    if let Ok(mut guard) = CACHE.lock() {
        guard.get_or_insert_with(HashMap::new).extend(map);
    }
    Ok(n)
}

pub fn save_cache(path: &Path) -> Result<()> {
    let mut out = String::new();
    if let Ok(guard) = CACHE.lock()
        && let Some(map) = guard.as_ref()
    {
        for ((user, salt, iterations, sha1), salted) in map {
            out.push_str(&format!(
                "{user} {} {iterations} {} {}\n",
                B64.encode(salt),
                u8::from(*sha1),
                B64.encode(salted)
            ));
        }
    }
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// One SCRAM exchange from the client's side.
pub struct ScramClient {
    hash: Hash,
    user: String,
    password: String,
    nonce: String,
    client_first_bare: String,
    server_signature: Vec<u8>,
}

impl ScramClient {
    pub fn new(hash: Hash, user: &str, password: &str) -> Self {
        let nonce = B64.encode(rand::random::<[u8; 18]>());
        let client_first_bare = format!("n={},r={nonce}", saslname(user));
        ScramClient {
            hash,
            user: user.to_owned(),
            password: password.to_owned(),
            nonce,
            client_first_bare,
            server_signature: Vec::new(),
        }
    }

    /// The `client-first-message` (no channel binding: `n,,`).
    pub fn client_first(&self) -> Vec<u8> {
        format!("n,,{}", self.client_first_bare).into_bytes()
    }

    /// Takes the `server-first-message`, returns the `client-final-message`.
    pub fn client_final(&mut self, server_first: &[u8]) -> Result<Vec<u8>> {
        let server_first = std::str::from_utf8(server_first).context("server-first not UTF-8")?;
        let (mut nonce, mut salt, mut iterations) = (None, None, None);
        for part in server_first.split(',') {
            if let Some(v) = part.strip_prefix("r=") {
                nonce = Some(v);
            } else if let Some(v) = part.strip_prefix("s=") {
                salt = Some(B64.decode(v).context("bad salt")?);
            } else if let Some(v) = part.strip_prefix("i=") {
                iterations = Some(v.parse::<u32>().context("bad iteration count")?);
            }
        }
        let (Some(nonce), Some(salt), Some(iterations)) = (nonce, salt, iterations) else {
            bail!("incomplete server-first-message: {server_first}");
        };
        if !nonce.starts_with(&self.nonce) || iterations == 0 || iterations > 1_000_000 {
            bail!("server-first-message rejected (nonce or iteration count)");
        }
        let salted = cached_salted(self.hash, &self.user, &self.password, &salt, iterations);
        let client_key = self.hash.hmac(&salted, b"Client Key");
        let stored_key = self.hash.digest(&client_key);
        let without_proof = format!("c=biws,r={nonce}");
        let auth_message = format!("{},{server_first},{without_proof}", self.client_first_bare);
        let signature = self.hash.hmac(&stored_key, auth_message.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(&signature)
            .map(|(a, b)| a ^ b)
            .collect();
        let server_key = self.hash.hmac(&salted, b"Server Key");
        self.server_signature = self.hash.hmac(&server_key, auth_message.as_bytes());
        Ok(format!("{without_proof},p={}", B64.encode(proof)).into_bytes())
    }

    /// Checks the `server-final-message` (`v=…`): the server knew the secret.
    pub fn verify(&self, server_final: &[u8]) -> Result<()> {
        let text = std::str::from_utf8(server_final).context("server-final not UTF-8")?;
        let Some(v) = text.split(',').find_map(|p| p.strip_prefix("v=")) else {
            bail!("server-final-message without verifier: {text}");
        };
        if B64.decode(v).ok().as_deref() != Some(&self.server_signature[..]) {
            bail!("server signature mismatch");
        }
        Ok(())
    }
}

fn saslname(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

/// The PLAIN message: `\0user\0password`.
pub fn plain(user: &str, password: &str) -> Vec<u8> {
    format!("\0{user}\0{password}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 5802 §5 example, with the client nonce fixed.
    #[test]
    fn rfc5802_vector() {
        let mut c = ScramClient::new(Hash::Sha1, "user", "pencil");
        c.nonce = "fyko+d2lbbFgONRv9qkxdawL".into();
        c.client_first_bare = "n=user,r=fyko+d2lbbFgONRv9qkxdawL".into();
        let fin = c
            .client_final(b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096")
            .expect("final");
        assert_eq!(
            String::from_utf8(fin).expect("utf8"),
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        );
        c.verify(b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=").expect("verify");
    }
}
