//! SASL for the server side: SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677)
//! and PLAIN (RFC 4616).
//!
//! Only salted SCRAM secrets are ever stored (`StoredKey`, `ServerKey`, salt and
//! iteration count); PLAIN is verified by deriving the SCRAM-SHA-256 secret from the
//! offered password and comparing it in constant time. Channel binding is not
//! offered, so the `-PLUS` variants are not advertised (RFC 5802 §6).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The mechanisms kith offers, strongest first.
pub const MECHANISMS: [Mechanism; 3] = [
    Mechanism::ScramSha256,
    Mechanism::ScramSha1,
    Mechanism::Plain,
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mechanism {
    ScramSha1,
    ScramSha256,
    Plain,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::Plain => "PLAIN",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        MECHANISMS.into_iter().find(|m| m.name() == name)
    }
}

/// The hash a SCRAM exchange uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScramHash {
    Sha1,
    Sha256,
}

/// XEP-0484's token mechanism: HT-SHA-256-NONE (draft-schmaus-kitten-sasl-ht),
/// a proof of possession of a server-issued token in one round trip, without
/// channel binding.
pub const HT_SHA_256_NONE: &str = "HT-SHA-256-NONE";

/// An HT initiator message (the client's first and only message), borrowed.
///
/// Two framings are in use. Deployed clients and servers (Conversations,
/// Prosody, ejabberd, xmpp.js) follow draft-schmaus-kitten-sasl-ht-09:
/// `authcid NUL HMAC(token, "Initiator")`, answered with the bare
/// `HMAC(token, "Responder")`. draft-ietf-kitten-sasl-ht-01 adds key/value
/// pairs: `authcid NUL extras NUL HMAC(token, "Initiator" || extras)`,
/// answered with `NUL extras NUL HMAC(token, "Responder" || extras)`. The
/// HMAC is 32 bytes, so the length after the first NUL tells them apart, and
/// each is answered in its own framing.
#[derive(Debug)]
pub struct HtInitiator<'a> {
    /// Who claims the token (a username, or `user@domain`).
    pub authcid: &'a str,
    /// The key/value pairs of the newer framing; `None` in the older one.
    extras: Option<&'a [u8]>,
    hmac: &'a [u8],
}

const HT_HMAC_LEN: usize = 32;

impl<'a> HtInitiator<'a> {
    pub fn parse(message: &'a [u8]) -> Result<Self, SaslError> {
        // The HMAC may contain NUL bytes: split at the first one only.
        let split = message
            .iter()
            .position(|b| *b == 0)
            .ok_or(SaslError::MalformedRequest)?;
        let (authcid, rest) = (&message[..split], &message[split + 1..]);
        let authcid = std::str::from_utf8(authcid).map_err(|_| SaslError::MalformedRequest)?;
        // The draft: "MUST accept up to 255 octets"; more is not a username here.
        if authcid.is_empty() || authcid.len() > 1023 {
            return Err(SaslError::MalformedRequest);
        }
        let (extras, hmac) = match rest.len() {
            HT_HMAC_LEN => (None, rest),
            n if n > HT_HMAC_LEN && rest[n - HT_HMAC_LEN - 1] == 0 => {
                let extras = &rest[..n - HT_HMAC_LEN - 1];
                if extras.contains(&0) {
                    return Err(SaslError::MalformedRequest);
                }
                (Some(extras), &rest[n - HT_HMAC_LEN..])
            }
            _ => return Err(SaslError::MalformedRequest),
        };
        Ok(HtInitiator {
            authcid,
            extras,
            hmac,
        })
    }

    /// Checks the proof against `token` (in constant time); on success, the
    /// responder message that proves the server knows it too.
    pub fn verify(&self, token: &str) -> Option<Vec<u8>> {
        let extras = self.extras.unwrap_or_default();
        let expected = ht_hmac(token, b"Initiator", extras);
        if !bool::from(expected.as_slice().ct_eq(self.hmac)) {
            return None;
        }
        // The server adds no key/value pairs of its own.
        let responder = ht_hmac(token, b"Responder", b"");
        Some(match self.extras {
            None => responder,
            Some(_) => [&[0u8, 0u8][..], &responder].concat(),
        })
    }
}

/// `HMAC-SHA-256(token, label || cb-data || extras)`; cb-data is empty for -NONE.
fn ht_hmac(token: &str, label: &[u8], extras: &[u8]) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(token.as_bytes())
        .expect("HMAC takes keys of any length");
    mac.update(label);
    mac.update(extras);
    mac.finalize().into_bytes().to_vec()
}

/// SASL failure conditions (RFC 6120 §6.5) this code produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("malformed-request")]
    MalformedRequest,
    #[error("incorrect-encoding")]
    IncorrectEncoding,
    #[error("not-authorized")]
    NotAuthorized,
    #[error("invalid-authzid")]
    InvalidAuthzid,
    #[error("encryption-required")]
    EncryptionRequired,
    #[error("invalid-mechanism")]
    InvalidMechanism,
    #[error("aborted")]
    Aborted,
    #[error("credentials-expired")]
    CredentialsExpired,
    #[error("temporary-auth-failure")]
    TemporaryAuthFailure,
}

impl SaslError {
    /// The condition element name inside `<failure/>`.
    pub fn condition(self) -> &'static str {
        match self {
            SaslError::MalformedRequest => "malformed-request",
            SaslError::IncorrectEncoding => "incorrect-encoding",
            SaslError::NotAuthorized => "not-authorized",
            SaslError::InvalidAuthzid => "invalid-authzid",
            SaslError::EncryptionRequired => "encryption-required",
            SaslError::InvalidMechanism => "invalid-mechanism",
            SaslError::Aborted => "aborted",
            SaslError::CredentialsExpired => "credentials-expired",
            SaslError::TemporaryAuthFailure => "temporary-auth-failure",
        }
    }
}

/// A stored SCRAM secret, borrowed.
#[derive(Clone, Copy, Debug)]
pub struct SecretRef<'a> {
    pub salt: &'a [u8],
    pub iterations: u32,
    pub stored_key: &'a [u8],
    pub server_key: &'a [u8],
}

/// A derived SCRAM secret: (`StoredKey`, `ServerKey`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DerivedSecret {
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// Derives the SCRAM secret for a password (RFC 5802 §3).
pub fn derive_secret(
    hash: ScramHash,
    password: &str,
    salt: &[u8],
    iterations: u32,
) -> DerivedSecret {
    // RFC 5802 §3: SaltedPassword := Hi(Normalize(password), salt, i), Hi = PBKDF2-HMAC.
    let salted = match hash {
        ScramHash::Sha1 => {
            pbkdf2::pbkdf2_hmac_array::<Sha1, 20>(password.as_bytes(), salt, iterations).to_vec()
        }
        ScramHash::Sha256 => {
            pbkdf2::pbkdf2_hmac_array::<Sha256, 32>(password.as_bytes(), salt, iterations).to_vec()
        }
    };
    let client_key = hmac_for(hash, &salted, b"Client Key");
    DerivedSecret {
        stored_key: digest(hash, &client_key),
        server_key: hmac_for(hash, &salted, b"Server Key"),
    }
}

fn digest(hash: ScramHash, data: &[u8]) -> Vec<u8> {
    match hash {
        ScramHash::Sha1 => Sha1::digest(data).to_vec(),
        ScramHash::Sha256 => Sha256::digest(data).to_vec(),
    }
}

fn hmac_for(hash: ScramHash, key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail here.
    match hash {
        ScramHash::Sha1 => match Hmac::<Sha1>::new_from_slice(key) {
            Ok(mut mac) => {
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            Err(_) => Vec::new(),
        },
        ScramHash::Sha256 => match Hmac::<Sha256>::new_from_slice(key) {
            Ok(mut mac) => {
                mac.update(data);
                mac.finalize().into_bytes().to_vec()
            }
            Err(_) => Vec::new(),
        },
    }
}

/// The parsed `client-first-message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientFirst {
    pub username: String,
    pub authzid: Option<String>,
}

/// The server side of one SCRAM exchange, as a state machine:
/// [`ScramServer::client_first`] → (look up the secret) → [`ScramServer::server_first`]
/// → [`ScramServer::client_final`].
pub struct ScramServer {
    hash: ScramHash,
    gs2_header: String,
    client_first_bare: String,
    client_nonce: String,
    nonce: String,
    server_first: String,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
}

impl ScramServer {
    pub fn new(hash: ScramHash) -> Self {
        ScramServer {
            hash,
            gs2_header: String::new(),
            client_first_bare: String::new(),
            client_nonce: String::new(),
            nonce: String::new(),
            server_first: String::new(),
            stored_key: Vec::new(),
            server_key: Vec::new(),
        }
    }

    /// Parses the client-first-message (RFC 5802 §7).
    pub fn client_first(&mut self, message: &[u8]) -> Result<ClientFirst, SaslError> {
        let message = std::str::from_utf8(message).map_err(|_| SaslError::MalformedRequest)?;
        let (cbind_flag, rest) = message.split_once(',').ok_or(SaslError::MalformedRequest)?;
        match cbind_flag {
            // "y": the client supports channel binding but thinks we don't; we don't
            // advertise -PLUS, so that is true and acceptable (RFC 5802 §6).
            "n" | "y" => {}
            _ => return Err(SaslError::MalformedRequest),
        }
        let (authzid_field, bare) = rest.split_once(',').ok_or(SaslError::MalformedRequest)?;
        let authzid = match authzid_field {
            "" => None,
            field => Some(decode_saslname(
                field
                    .strip_prefix("a=")
                    .ok_or(SaslError::MalformedRequest)?,
            )?),
        };
        let mut username = None;
        let mut nonce = None;
        for (index, attribute) in bare.split(',').enumerate() {
            match (index, attribute.split_at_checked(2)) {
                (0, Some(("m=", _))) => return Err(SaslError::MalformedRequest),
                (0, Some(("n=", value))) => username = Some(decode_saslname(value)?),
                (1, Some(("r=", value))) if !value.is_empty() && value.is_ascii() => {
                    nonce = Some(value.to_owned())
                }
                (0 | 1, _) => return Err(SaslError::MalformedRequest),
                _ => {} // extensions are ignored
            }
        }
        let username = username.ok_or(SaslError::MalformedRequest)?;
        self.client_nonce = nonce.ok_or(SaslError::MalformedRequest)?;
        self.gs2_header = format!("{cbind_flag},{authzid_field},");
        self.client_first_bare = bare.to_owned();
        Ok(ClientFirst { username, authzid })
    }

    /// Produces the server-first-message for the looked-up secret. For an unknown user
    /// pass a made-up secret: the exchange then fails at the end, as it would for a
    /// wrong password, without revealing which accounts exist.
    pub fn server_first(&mut self, secret: SecretRef<'_>, server_nonce: &str) -> Vec<u8> {
        self.nonce = format!("{}{}", self.client_nonce, server_nonce);
        self.server_first = format!(
            "r={},s={},i={}",
            self.nonce,
            B64.encode(secret.salt),
            secret.iterations
        );
        self.stored_key = secret.stored_key.to_vec();
        self.server_key = secret.server_key.to_vec();
        self.server_first.as_bytes().to_vec()
    }

    /// Verifies the client-final-message; on success returns the server-final-message.
    pub fn client_final(&self, message: &[u8]) -> Result<Vec<u8>, SaslError> {
        let keys = [(self.stored_key.as_slice(), self.server_key.as_slice())];
        self.client_final_any(message, &keys)
            .map(|(_, server_final)| server_final)
    }

    /// Verifies the client-final-message against several candidate secrets that
    /// share the salt and iteration count sent in server-first (one per device
    /// credential of an account). On success returns which candidate matched and
    /// the server-final-message signed with that candidate's `ServerKey`.
    ///
    /// RFC 5802 §3: the server recovers `ClientKey = ClientProof XOR
    /// HMAC(StoredKey, AuthMessage)` and accepts when `H(ClientKey) == StoredKey`;
    /// that test is made for every candidate, in constant time each, without
    /// stopping early.
    pub fn client_final_any(
        &self,
        message: &[u8],
        candidates: &[(&[u8], &[u8])],
    ) -> Result<(usize, Vec<u8>), SaslError> {
        let message = std::str::from_utf8(message).map_err(|_| SaslError::MalformedRequest)?;
        let (without_proof, proof) = message
            .rsplit_once(",p=")
            .ok_or(SaslError::MalformedRequest)?;
        let mut fields = without_proof.split(',');
        let channel_binding = fields
            .next()
            .and_then(|f| f.strip_prefix("c="))
            .ok_or(SaslError::MalformedRequest)?;
        let nonce = fields
            .next()
            .and_then(|f| f.strip_prefix("r="))
            .ok_or(SaslError::MalformedRequest)?;
        let channel_binding = B64
            .decode(channel_binding)
            .map_err(|_| SaslError::IncorrectEncoding)?;
        if channel_binding != self.gs2_header.as_bytes() || nonce != self.nonce {
            return Err(SaslError::NotAuthorized);
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| SaslError::IncorrectEncoding)?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let mut matched = None;
        for (index, (stored_key, _)) in candidates.iter().enumerate() {
            let client_signature = hmac_for(self.hash, stored_key, auth_message.as_bytes());
            if proof.len() != client_signature.len() {
                continue;
            }
            let client_key: Vec<u8> = proof
                .iter()
                .zip(&client_signature)
                .map(|(a, b)| a ^ b)
                .collect();
            let computed = digest(self.hash, &client_key);
            if bool::from(computed.ct_eq(stored_key)) && matched.is_none() {
                matched = Some(index);
            }
        }
        let index = matched.ok_or(SaslError::NotAuthorized)?;
        let server_key = candidates[index].1;
        let server_signature = hmac_for(self.hash, server_key, auth_message.as_bytes());
        Ok((
            index,
            format!("v={}", B64.encode(server_signature)).into_bytes(),
        ))
    }
}

/// Decodes a SCRAM `saslname` (`=2C` → `,`, `=3D` → `=`).
fn decode_saslname(value: &str) -> Result<String, SaslError> {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(index) = rest.find('=') {
        out.push_str(&rest[..index]);
        let escape = rest
            .get(index..index + 3)
            .ok_or(SaslError::MalformedRequest)?;
        match escape {
            "=2C" => out.push(','),
            "=3D" => out.push('='),
            _ => return Err(SaslError::MalformedRequest),
        }
        rest = &rest[index + 3..];
    }
    out.push_str(rest);
    if out.is_empty() {
        return Err(SaslError::MalformedRequest);
    }
    Ok(out)
}

/// A parsed PLAIN message (RFC 4616 §2): `[authzid] NUL authcid NUL passwd`.
#[derive(Debug)]
pub struct PlainCredentials {
    pub authzid: Option<String>,
    pub username: String,
    pub password: String,
}

pub fn parse_plain(message: &[u8]) -> Result<PlainCredentials, SaslError> {
    let mut parts = message.split(|b| *b == 0);
    let (Some(authzid), Some(username), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::MalformedRequest);
    };
    let text =
        |bytes: &[u8]| String::from_utf8(bytes.to_vec()).map_err(|_| SaslError::MalformedRequest);
    let username = text(username)?;
    let password = text(password)?;
    if username.is_empty() || password.is_empty() {
        return Err(SaslError::NotAuthorized);
    }
    let authzid = if authzid.is_empty() {
        None
    } else {
        Some(text(authzid)?)
    };
    Ok(PlainCredentials {
        authzid,
        username,
        password,
    })
}

/// Checks a plaintext password against a stored SCRAM secret, in constant time.
pub fn verify_password(hash: ScramHash, password: &str, secret: SecretRef<'_>) -> bool {
    let derived = derive_secret(hash, password, secret.salt, secret.iterations);
    bool::from(derived.stored_key.ct_eq(secret.stored_key))
}

/// Base64 as SASL carries it in XMPP (RFC 6120 §6.4.2: `=` means an empty response).
pub fn decode_payload(text: &str) -> Result<Vec<u8>, SaslError> {
    let text = text.trim();
    if text.is_empty() || text == "=" {
        return Ok(Vec::new());
    }
    B64.decode(text).map_err(|_| SaslError::IncorrectEncoding)
}

pub fn encode_payload(bytes: &[u8]) -> String {
    if bytes.is_empty() {
        return "=".to_owned();
    }
    B64.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ht_message(authcid: &str, extras: Option<&[u8]>, token: &str) -> Vec<u8> {
        let mut message = authcid.as_bytes().to_vec();
        message.push(0);
        if let Some(extras) = extras {
            message.extend_from_slice(extras);
            message.push(0);
        }
        message.extend(ht_hmac(token, b"Initiator", extras.unwrap_or_default()));
        message
    }

    #[test]
    fn ht_checks_the_token_in_either_framing() {
        // The deployed framing: the bare responder HMAC back.
        let message = ht_message("juliet", None, "secret-token");
        let initiator = HtInitiator::parse(&message).expect("parses");
        assert_eq!(initiator.authcid, "juliet");
        let responder = initiator.verify("secret-token").expect("valid");
        assert_eq!(responder, ht_hmac("secret-token", b"Responder", b""));
        assert!(initiator.verify("other-token").is_none());
        // The newer one, with (and without) key/value pairs: framed answers.
        for extras in [&b""[..], b"k=v,x=y"] {
            let message = ht_message("juliet", Some(extras), "secret-token");
            let initiator = HtInitiator::parse(&message).expect("parses");
            let responder = initiator.verify("secret-token").expect("valid");
            assert_eq!(&responder[..2], &[0, 0]);
            assert_eq!(&responder[2..], ht_hmac("secret-token", b"Responder", b""));
        }
    }

    #[test]
    fn ht_refuses_malformed_messages() {
        for bad in [&b""[..], b"juliet", b"\0abc", b"juliet\0short"] {
            assert_eq!(
                HtInitiator::parse(bad).err(),
                Some(SaslError::MalformedRequest),
                "{bad:?}"
            );
        }
        // An HMAC that happens to hold a NUL is still one HMAC.
        let mut message = b"juliet\0".to_vec();
        message.extend([0u8; 32]);
        assert!(HtInitiator::parse(&message).is_ok());
    }

    fn run_exchange(
        hash: ScramHash,
        password: &str,
        salt_b64: &str,
        iterations: u32,
        client_first: &str,
        server_nonce: &str,
        client_final: &str,
    ) -> Result<String, SaslError> {
        let salt = B64.decode(salt_b64).expect("test salt");
        let secret = derive_secret(hash, password, &salt, iterations);
        let mut server = ScramServer::new(hash);
        let first = server.client_first(client_first.as_bytes())?;
        assert_eq!(first.username, "user");
        server.server_first(
            SecretRef {
                salt: &salt,
                iterations,
                stored_key: &secret.stored_key,
                server_key: &secret.server_key,
            },
            server_nonce,
        );
        server
            .client_final(client_final.as_bytes())
            .map(|v| String::from_utf8(v).expect("ascii"))
    }

    /// The test vector of RFC 5802 §5.
    #[test]
    fn rfc5802_sha1_vector() {
        let result = run_exchange(
            ScramHash::Sha1,
            "pencil",
            "QSXCR+Q6sek8bf92",
            4096,
            "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
            "3rfcNHYJY1ZVvWVs7j",
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        );
        assert_eq!(result.as_deref(), Ok("v=rmF9pqV8S7suAoZWja4dJRkFsKQ="));
    }

    /// The test vector of RFC 7677 §3.
    #[test]
    fn rfc7677_sha256_vector() {
        let result = run_exchange(
            ScramHash::Sha256,
            "pencil",
            "W22ZaJ0SNY7soEsUEjb6gQ==",
            4096,
            "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        );
        assert_eq!(
            result.as_deref(),
            Ok("v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
        );
    }

    /// One salt, several device secrets: the RFC 7677 exchange succeeds against
    /// the candidate derived from "pencil", wherever it sits in the list, and
    /// the server signature is that candidate's.
    #[test]
    fn any_of_several_candidates_matches() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").expect("test salt");
        let other = derive_secret(ScramHash::Sha256, "other device", &salt, 4096);
        let right = derive_secret(ScramHash::Sha256, "pencil", &salt, 4096);
        let mut server = ScramServer::new(ScramHash::Sha256);
        server
            .client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO")
            .expect("client-first");
        server.server_first(
            SecretRef {
                salt: &salt,
                iterations: 4096,
                stored_key: &other.stored_key,
                server_key: &other.server_key,
            },
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        );
        let client_final = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        assert_eq!(
            server.client_final(client_final),
            Err(SaslError::NotAuthorized)
        );
        let candidates = [
            (other.stored_key.as_slice(), other.server_key.as_slice()),
            (right.stored_key.as_slice(), right.server_key.as_slice()),
        ];
        let (index, server_final) = server
            .client_final_any(client_final, &candidates)
            .expect("second candidate matches");
        assert_eq!(index, 1);
        assert_eq!(
            server_final,
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec()
        );
        assert_eq!(
            server.client_final_any(client_final, &candidates[..1]),
            Err(SaslError::NotAuthorized)
        );
    }

    #[test]
    fn wrong_proof_is_refused() {
        let result = run_exchange(
            ScramHash::Sha1,
            "not-pencil",
            "QSXCR+Q6sek8bf92",
            4096,
            "n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
            "3rfcNHYJY1ZVvWVs7j",
            "c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        );
        assert_eq!(result, Err(SaslError::NotAuthorized));
    }

    #[test]
    fn malformed_messages_are_refused() {
        for bad in [
            "",
            "n",
            "p=tls-unique,,n=user,r=abc",
            "n,,r=abc",
            "n,,n=us=ZZer,r=a",
            "n,,m=ext,n=user,r=a",
        ] {
            let mut server = ScramServer::new(ScramHash::Sha256);
            assert!(
                server.client_first(bad.as_bytes()).is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn plain_parsing_and_verification() {
        let creds = parse_plain(b"\0juliet\0r0m30").expect("valid");
        assert_eq!(creds.username, "juliet");
        assert!(parse_plain(b"juliet\0r0m30").is_err());
        let secret = derive_secret(ScramHash::Sha256, "r0m30", b"salt", 4096);
        let secret_ref = SecretRef {
            salt: b"salt",
            iterations: 4096,
            stored_key: &secret.stored_key,
            server_key: &secret.server_key,
        };
        assert!(verify_password(ScramHash::Sha256, "r0m30", secret_ref));
        assert!(!verify_password(ScramHash::Sha256, "r0m31", secret_ref));
    }
}
