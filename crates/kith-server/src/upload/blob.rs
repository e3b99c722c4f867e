//! The blob interface: where uploaded bytes live, behind one type with two real
//! backends through `object_store` — a local directory (default) and
//! S3-compatible storage. Writes stream (multipart above one part), reads
//! stream and take a byte range; nothing here holds a whole file in memory
//! except [`Blobs::read_small`], which is bounded by its caller.

use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};

use crate::config::{Config, UploadBackend};

/// Size of one buffered part: S3 needs at least 5 MiB per multipart part.
const PART_SIZE: usize = 8 * 1024 * 1024;
/// Parts in flight at once per upload; memory per PUT ≈ PART_SIZE × (this + 1).
const PARTS_IN_FLIGHT: usize = 2;

/// Errors of the blob store.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("no such blob")]
    NotFound,
    #[error("blob store: {0}")]
    Store(#[from] object_store::Error),
    #[error("blob larger than {0} bytes")]
    TooLarge(u64),
    #[error("blob store configuration: {0}")]
    Config(String),
}

/// The blob store (cheap to clone).
#[derive(Clone, Debug)]
pub struct Blobs {
    store: Arc<dyn ObjectStore>,
}

impl Blobs {
    /// Opens the backend `[upload]` names.
    pub fn from_config(config: &Config) -> Result<Blobs, BlobError> {
        let upload = &config.upload;
        let store: Arc<dyn ObjectStore> = match upload.backend {
            UploadBackend::Fs => {
                let dir = upload
                    .dir
                    .clone()
                    .unwrap_or_else(|| config.server.data_dir.join("uploads"));
                std::fs::create_dir_all(&dir).map_err(|error| {
                    BlobError::Config(format!("creating {}: {error}", dir.display()))
                })?;
                Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&dir)?)
            }
            UploadBackend::S3 => {
                let mut builder = object_store::aws::AmazonS3Builder::new()
                    .with_bucket_name(&upload.s3_bucket)
                    .with_region(&upload.s3_region)
                    .with_virtual_hosted_style_request(!upload.s3_path_style)
                    .with_allow_http(upload.s3_allow_http);
                if let Some(endpoint) = &upload.s3_endpoint {
                    builder = builder.with_endpoint(endpoint);
                }
                if let Some(key) = &upload.s3_access_key_id {
                    builder = builder.with_access_key_id(key);
                }
                if let Some(secret) = &upload.s3_secret_access_key {
                    builder = builder.with_secret_access_key(secret);
                }
                Arc::new(builder.build()?)
            }
        };
        Ok(Blobs { store })
    }

    /// A streaming writer for `key`; nothing is visible under `key` until
    /// [`BlobWriter::finish`] succeeds.
    pub fn writer(&self, key: &str) -> BlobWriter {
        BlobWriter {
            inner: BufWriter::with_capacity(self.store.clone(), Path::from(key), PART_SIZE)
                .with_max_concurrency(PARTS_IN_FLIGHT),
        }
    }

    /// Stores a small object in one request.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), BlobError> {
        self.store
            .put(&Path::from(key), PutPayload::from_bytes(bytes))
            .await?;
        Ok(())
    }

    /// Streams `range` of `key` (all of it when `None`).
    pub async fn read(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<BoxStream<'static, Result<Bytes, BlobError>>, BlobError> {
        let options = GetOptions {
            range: range.map(GetRange::Bounded),
            ..GetOptions::default()
        };
        let result = self
            .store
            .get_opts(&Path::from(key), options)
            .await
            .map_err(not_found)?;
        Ok(result.into_stream().map_err(BlobError::from).boxed())
    }

    /// Reads all of `key` into memory, refusing objects over `limit` bytes.
    pub async fn read_small(&self, key: &str, limit: u64) -> Result<Vec<u8>, BlobError> {
        let mut stream = self.read(key, None).await?;
        let mut out = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            if out.len() as u64 + chunk.len() as u64 > limit {
                return Err(BlobError::TooLarge(limit));
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Reads one range of `key` into memory (small ranges only).
    pub async fn read_range(&self, key: &str, range: Range<u64>) -> Result<Bytes, BlobError> {
        self.store
            .get_range(&Path::from(key), range)
            .await
            .map_err(not_found)
    }

    /// Deletes `key`; a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }
}

fn not_found(error: object_store::Error) -> BlobError {
    match error {
        object_store::Error::NotFound { .. } => BlobError::NotFound,
        other => BlobError::Store(other),
    }
}

/// An upload in progress: buffers one part, then streams parts (multipart).
pub struct BlobWriter {
    inner: BufWriter,
}

impl BlobWriter {
    pub async fn write(&mut self, bytes: Bytes) -> Result<(), BlobError> {
        self.inner.put(bytes).await?;
        Ok(())
    }

    /// Completes the object; it becomes visible whole or not at all.
    pub async fn finish(mut self) -> Result<(), BlobError> {
        use tokio::io::AsyncWriteExt as _;
        self.inner
            .shutdown()
            .await
            .map_err(|error| BlobError::Config(format!("completing upload: {error}")))
    }

    /// Drops what was written (a failed or refused PUT).
    pub async fn abort(mut self) {
        if let Err(error) = self.inner.abort().await {
            tracing::debug!(%error, "aborting a partial upload");
        }
    }
}
