//! Server secrets kept in the store (`server_secrets`), shared by every node
//! of a cluster and kept across restarts: what makes an id stable that must
//! not reveal what it is made from. Each is made on first use by whichever
//! node gets there first (`Store::secret_get_or_insert`) and cached here.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::OnceCell;

/// The keyed hashes made from a server secret.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Secret {
    /// Phone sign-up codes are stored as an HMAC (`api::codes`).
    PhoneCode,
    /// XEP-0421 occupant ids (`features::muc`).
    OccupantId,
    /// The stable part of a resource bound with XEP-0386 (`sasl2`).
    Resource,
}

impl Secret {
    const ALL: usize = 3;

    /// Its row in `server_secrets` (never renamed: the ids made from it would change).
    fn name(self) -> &'static str {
        match self {
            Secret::PhoneCode => "phone-code-hmac",
            Secret::OccupantId => "muc-occupant-id",
            Secret::Resource => "bind2-resource",
        }
    }
}

/// The secrets read so far, as HMAC-SHA256 states keyed with them.
#[derive(Default)]
pub(crate) struct Secrets {
    keyed: [OnceCell<Hmac<Sha256>>; Secret::ALL],
}

impl Secrets {
    /// An HMAC-SHA256 keyed with `secret`, for the caller to feed and finish.
    pub(crate) async fn mac(
        &self,
        store: &kith_store::Store,
        secret: Secret,
    ) -> Result<Hmac<Sha256>, kith_store::StoreError> {
        self.keyed[secret as usize]
            .get_or_try_init(|| async {
                let candidate: [u8; 32] = rand::random();
                let key = store
                    .secret_get_or_insert(secret.name(), &candidate)
                    .await?;
                // HMAC takes a key of any length.
                Hmac::<Sha256>::new_from_slice(&key).map_err(|_| {
                    kith_store::StoreError::Corrupt(format!("server secret {}", secret.name()))
                })
            })
            .await
            .cloned()
    }
}
