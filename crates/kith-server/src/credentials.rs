//! Device credentials: one random secret per linked device, usable as the XMPP
//! SASL password (SCRAM and PLAIN) and as an HTTP bearer token.
//!
//! The string is `kd_<id>_<secret>`: the public id lets the HTTP API find the row,
//! the secret has 190 bits of entropy. The store keeps a SHA-256 of the whole
//! string (compared in constant time; a fast hash is enough for a random secret)
//! and, for SCRAM, `StoredKey`/`ServerKey` derived from it with the *account's*
//! salt and iteration count, so one server-first message serves every device and
//! the client-final proof tells which device it is (`ScramServer::client_final_any`).
//!
//! A session signed in with a credential is that device in the inbox log: its
//! cursor is kept under [`device_resource`], whatever resource it binds.

use kith_proto::sasl::{ScramHash, derive_secret};
use kith_store::{DeviceCredential, StoredCredentials};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const PREFIX: &str = "kd_";
const ID_LEN: usize = 16;
const SECRET_LEN: usize = 32;

/// A newly issued credential: the string handed to the device once, and its row.
pub struct Issued {
    pub credential: String,
    pub row: DeviceCredential,
}

/// The inbox-log device key of a credential: the `resource` its cursor is kept
/// under (a value no client is expected to bind as a resource).
pub fn device_resource(id: &str) -> String {
    format!("kith-device:{id}")
}

/// The id inside a credential string, if it has the credential's shape.
pub fn parse_id(credential: &str) -> Option<&str> {
    let rest = credential.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let alnum = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric());
    (id.len() == ID_LEN && secret.len() == SECRET_LEN && alnum(id) && alnum(secret)).then_some(id)
}

pub fn token_hash(credential: &str) -> Vec<u8> {
    Sha256::digest(credential.as_bytes()).to_vec()
}

/// Whether `credential` is the one `row` was issued for (constant time).
pub fn matches(row: &DeviceCredential, credential: &str) -> bool {
    bool::from(token_hash(credential).ct_eq(&row.token_hash))
}

/// Makes a credential for `owner`'s device `name`, its SCRAM keys derived under
/// the account's salts (`account`). PBKDF2 runs here: call it off the async workers.
pub fn issue(owner: &str, name: &str, account: &StoredCredentials, now_micros: i64) -> Issued {
    let id = crate::random_id(ID_LEN);
    let credential = format!("{PREFIX}{id}_{}", crate::random_id(SECRET_LEN));
    let sha1 = derive_secret(
        ScramHash::Sha1,
        &credential,
        &account.sha1.salt,
        account.sha1.iterations,
    );
    let sha256 = derive_secret(
        ScramHash::Sha256,
        &credential,
        &account.sha256.salt,
        account.sha256.iterations,
    );
    let row = DeviceCredential {
        id,
        owner: owner.to_owned(),
        name: name.to_owned(),
        token_hash: token_hash(&credential),
        sha1_stored_key: sha1.stored_key,
        sha1_server_key: sha1.server_key,
        sha256_stored_key: sha256.stored_key,
        sha256_server_key: sha256.server_key,
        created_micros: now_micros,
        last_used_micros: now_micros,
    };
    Issued { credential, row }
}

/// The SCRAM keys of a credential for one hash.
pub fn scram_keys(row: &DeviceCredential, hash: ScramHash) -> (&[u8], &[u8]) {
    match hash {
        ScramHash::Sha1 => (&row.sha1_stored_key, &row.sha1_server_key),
        ScramHash::Sha256 => (&row.sha256_stored_key, &row.sha256_server_key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_credentials_parse_and_verify() {
        let account = crate::accounts::credentials_for("unused");
        let issued = issue("15551234567", "phone", &account, 1);
        assert_eq!(parse_id(&issued.credential), Some(issued.row.id.as_str()));
        assert!(matches(&issued.row, &issued.credential));
        let mut wrong = issued.credential.clone();
        wrong.pop();
        wrong.push('!');
        assert!(!matches(&issued.row, &wrong));
        assert_eq!(parse_id(&wrong), None);
        // The SCRAM key is what a client derives from the credential as password.
        let derived = derive_secret(
            ScramHash::Sha256,
            &issued.credential,
            &account.sha256.salt,
            account.sha256.iterations,
        );
        assert_eq!(derived.stored_key, issued.row.sha256_stored_key);
        for bad in [
            "",
            "kd_",
            "kd_abc_def",
            "password",
            "kd_0123456789abcdef_short",
        ] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
    }
}
