//! Accounts: username rules and SCRAM credentials. Used by the admin CLI, in-band
//! registration and SASL, so every path stores exactly the same kind of secret.

use kith_proto::sasl::{ScramHash, derive_secret};
use kith_store::{ScramSecret, Store, StoredCredentials};
use rand::RngCore;

/// PBKDF2 iterations for new secrets (RFC 7677 §4 asks for at least 4096).
pub const SCRAM_ITERATIONS: u32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("invalid username {0:?}: use letters, digits and . _ - (no @ / or spaces)")]
    InvalidUsername(String),
    #[error("the password must be between 1 and 1024 characters")]
    InvalidPassword,
    #[error("user {0} already exists")]
    Exists(String),
    #[error("no such user {0}")]
    NoSuchUser(String),
    #[error(transparent)]
    Store(#[from] kith_store::StoreError),
}

/// Normalises a username as a JID localpart (RFC 7622 / nodeprep via the `jid`
/// crate): the account `Juliet` is `juliet`.
pub fn normalize_username(raw: &str, domain: &str) -> Result<String, AccountError> {
    let invalid = || AccountError::InvalidUsername(raw.to_owned());
    if raw.is_empty()
        || raw.len() > 1023
        || raw.contains(['@', '/'])
        || raw.chars().any(char::is_whitespace)
    {
        return Err(invalid());
    }
    let jid = kith_proto::BareJid::new(&format!("{raw}@{domain}")).map_err(|_| invalid())?;
    let node = jid.node().ok_or_else(invalid)?;
    Ok(node.as_str().to_owned())
}

pub fn check_password(password: &str) -> Result<(), AccountError> {
    if password.is_empty() || password.chars().count() > 1024 {
        return Err(AccountError::InvalidPassword);
    }
    Ok(())
}

/// Salted SCRAM-SHA-1 and SCRAM-SHA-256 secrets for a password, each with its own
/// random salt. The password itself is never stored.
pub fn credentials_for(password: &str) -> StoredCredentials {
    let salt = || {
        let mut salt = vec![0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        (salt, SCRAM_ITERATIONS)
    };
    credentials_with(password, salt(), salt())
}

/// Secrets for a new password under the salts the account already has: a phone
/// account's device credentials are derived under those salts (credentials.rs),
/// so changing its password must not change them.
fn credentials_keeping_salts(password: &str, existing: &StoredCredentials) -> StoredCredentials {
    credentials_with(
        password,
        (existing.sha1.salt.clone(), existing.sha1.iterations),
        (existing.sha256.salt.clone(), existing.sha256.iterations),
    )
}

fn credentials_with(
    password: &str,
    sha1: (Vec<u8>, u32),
    sha256: (Vec<u8>, u32),
) -> StoredCredentials {
    let secret = |hash, (salt, iterations): (Vec<u8>, u32)| {
        let derived = derive_secret(hash, password, &salt, iterations);
        ScramSecret {
            salt,
            iterations,
            stored_key: derived.stored_key,
            server_key: derived.server_key,
        }
    };
    StoredCredentials {
        sha1: secret(ScramHash::Sha1, sha1),
        sha256: secret(ScramHash::Sha256, sha256),
    }
}

pub async fn create(store: &Store, username: &str, password: &str) -> Result<(), AccountError> {
    check_password(password)?;
    if store
        .create_user(username, &credentials_for(password))
        .await?
    {
        Ok(())
    } else {
        Err(AccountError::Exists(username.to_owned()))
    }
}

pub async fn set_password(
    store: &Store,
    username: &str,
    password: &str,
) -> Result<(), AccountError> {
    check_password(password)?;
    let credentials = match store.phone_of(username).await? {
        Some(_) => match store.credentials(username).await? {
            Some(existing) => credentials_keeping_salts(password, &existing),
            None => return Err(AccountError::NoSuchUser(username.to_owned())),
        },
        None => credentials_for(password),
    };
    if store.set_credentials(username, &credentials).await? {
        Ok(())
    } else {
        Err(AccountError::NoSuchUser(username.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_normalised() {
        assert_eq!(
            normalize_username("Juliet", "localhost").ok().as_deref(),
            Some("juliet")
        );
        for bad in ["", "a@b", "a/b", "a b", "\u{0}"] {
            assert!(
                normalize_username(bad, "localhost").is_err(),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn credentials_verify_with_the_password_only() {
        let creds = credentials_for("s3cret");
        let secret = kith_proto::sasl::SecretRef {
            salt: &creds.sha256.salt,
            iterations: creds.sha256.iterations,
            stored_key: &creds.sha256.stored_key,
            server_key: &creds.sha256.server_key,
        };
        assert!(kith_proto::sasl::verify_password(
            ScramHash::Sha256,
            "s3cret",
            secret
        ));
        assert!(!kith_proto::sasl::verify_password(
            ScramHash::Sha256,
            "s3cret ",
            secret
        ));
        assert_ne!(creds.sha1.salt, creds.sha256.salt);
        let changed = credentials_keeping_salts("other", &creds);
        assert_eq!(changed.sha256.salt, creds.sha256.salt);
        assert_eq!(changed.sha1.iterations, creds.sha1.iterations);
        assert_ne!(changed.sha256.stored_key, creds.sha256.stored_key);
    }
}
