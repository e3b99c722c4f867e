//! XEP-0363 HTTP File Upload (v1.1, `urn:xmpp:http:upload:0`): the component
//! `upload.<domain>` hands out slots (§4), the HTTP side (`http.rs`) takes one
//! PUT per slot and serves GETs, and files live in the blob store (`blob.rs`).
//! After a PUT the server derives metadata off the request path (`media.rs`):
//! thumbnails and BlurHash for images, duration for Ogg Opus voice notes.
//!
//! Lifecycle: slots expire unused after `slot_expiry_secs`; files after
//! `expire_after_secs`; a sweep every `sweep_interval_secs` deletes both (blob
//! first, then the row). Deleting an account purges its files; the sweep also
//! catches files whose owner no longer exists.

pub mod blob;
pub(crate) mod http;
pub mod media;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use kith_proto::error::StanzaErrorCondition;
use kith_proto::{Element, Jid, StanzaError, ns};
use kith_store::{NewUpload, Store, UploadCreated};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::Server;
use crate::config::Config;
use blob::Blobs;

/// XEP-0363 namespace.
pub const NS: &str = "urn:xmpp:http:upload:0";
const NS_DATA: &str = "jabber:x:data";

/// Files processed for metadata at once (thumbnails are CPU-heavy).
const PROCESSING_AT_ONCE: usize = 2;
/// A PUT that has not finished after this long is considered dead and swept.
const STALE_UPLOAD_SECS: i64 = 24 * 3600;
/// Rows removed per sweep round.
const SWEEP_BATCH: i64 = 500;
/// Longest file name kept, in characters.
const MAX_FILENAME_CHARS: usize = 200;

/// The running upload service.
pub(crate) struct Service {
    /// The component's JID (`upload.<domain>` by default).
    pub domain: String,
    pub blobs: Blobs,
    processing: Arc<Semaphore>,
}

impl Service {
    pub(crate) fn start(config: &Config) -> anyhow::Result<Option<Service>> {
        if !config.upload.enabled {
            return Ok(None);
        }
        let blobs = Blobs::from_config(config).context("opening the upload blob store")?;
        Ok(Some(Service {
            domain: service_domain(config),
            blobs,
            processing: Arc::new(Semaphore::new(PROCESSING_AT_ONCE)),
        }))
    }
}

fn service_domain(config: &Config) -> String {
    config
        .upload
        .domain
        .clone()
        .unwrap_or_else(|| format!("upload.{}", config.server.domain))
}

/// Whether an IQ's `to` is the upload component.
pub(crate) fn is_component(server: &Server, to: Option<&Jid>) -> bool {
    match (&server.upload, to) {
        (Some(service), Some(to)) => {
            to.node().is_none() && to.resource().is_none() && to.domain().as_str() == service.domain
        }
        _ => false,
    }
}

/// The disco#items entry for the server's own items (XEP-0363 §3).
pub(crate) fn disco_item(server: &Server) -> Option<Element> {
    server.upload.as_ref().map(|service| {
        Element::new(ns::DISCO_ITEMS, "item")
            .attr("jid", service.domain.as_str())
            .attr("name", "HTTP File Upload")
    })
}

/// Answers an IQ get addressed to the component: disco#info (§3: identity
/// `store/file`, the feature, and the `max-file-size` form of §3 / XEP-0128),
/// empty disco#items, and slot requests (§4).
pub(crate) async fn handle_iq(
    server: &Arc<Server>,
    owner: &str,
    payload: &Element,
    set: bool,
) -> Result<Option<Element>, StanzaError> {
    if set {
        return Err(StanzaError::service_unavailable());
    }
    match (payload.name.as_str(), payload.ns.as_str()) {
        ("query", ns::DISCO_INFO) => {
            if payload.get_attr("node").is_some() {
                return Err(StanzaError::item_not_found());
            }
            Ok(Some(disco_info(server)))
        }
        ("query", ns::DISCO_ITEMS) => Ok(Some(Element::new(ns::DISCO_ITEMS, "query"))),
        ("request", NS) => request_slot(server, owner, payload).await.map(Some),
        _ => Err(StanzaError::service_unavailable()),
    }
}

fn disco_info(server: &Server) -> Element {
    let field = |var: &str, value: String, hidden: bool| {
        Element::new(NS_DATA, "field")
            .attr("var", var)
            .attr_opt("type", hidden.then_some("hidden"))
            .child(Element::new(NS_DATA, "value").text(value))
    };
    let form = Element::new(NS_DATA, "x")
        .attr("type", "result")
        .child(field("FORM_TYPE", NS.to_owned(), true))
        .child(field(
            "max-file-size",
            server.config.upload.max_file_size.to_string(),
            false,
        ));
    Element::new(ns::DISCO_INFO, "query")
        .child(
            Element::new(ns::DISCO_INFO, "identity")
                .attr("category", "store")
                .attr("type", "file")
                .attr("name", "HTTP File Upload"),
        )
        .child(Element::new(ns::DISCO_INFO, "feature").attr("var", ns::DISCO_INFO))
        .child(Element::new(ns::DISCO_INFO, "feature").attr("var", NS))
        .child(form)
}

/// §4: checks the request against the limits, records the slot and answers
/// with its PUT URL (and the `Authorization` header the PUT must carry, §5)
/// and GET URL.
async fn request_slot(
    server: &Arc<Server>,
    owner: &str,
    request: &Element,
) -> Result<Element, StanzaError> {
    let limits = &server.config.upload;
    let filename = request
        .get_attr("filename")
        .map(clean_filename)
        .ok_or_else(|| StanzaError::bad_request().with_text("filename is required"))?;
    let size: u64 = request
        .get_attr("size")
        .and_then(|s| s.parse().ok())
        .filter(|&s| s > 0)
        .ok_or_else(|| StanzaError::bad_request().with_text("size must be a positive integer"))?;
    let content_type = match request.get_attr("content-type") {
        None | Some("") => "application/octet-stream".to_owned(),
        Some(given) => normalize_content_type(given).ok_or_else(|| {
            StanzaError::bad_request().with_text("content-type is not a MIME type")
        })?,
    };
    if size > limits.max_file_size {
        // §4, example 4: not-acceptable with the maximum.
        return Err(StanzaError::new(StanzaErrorCondition::NotAcceptable)
            .with_text(format!(
                "File too large. The maximum file size is {} bytes",
                limits.max_file_size
            ))
            .with_application(
                Element::new(NS, "file-too-large").child(
                    Element::new(NS, "max-file-size").text(limits.max_file_size.to_string()),
                ),
            ));
    }
    if !type_allowed(&limits.allowed_types, &content_type) {
        return Err(StanzaError::new(StanzaErrorCondition::NotAcceptable)
            .with_text(format!("Files of type {content_type} are not accepted")));
    }
    let id = random_token(24);
    let token = random_token(32);
    let now = crate::now_micros();
    let slot_secs = i64::try_from(limits.slot_expiry_secs).unwrap_or(i64::MAX / 2_000_000);
    let new = NewUpload {
        id: id.clone(),
        owner: owner.to_owned(),
        filename: filename.clone(),
        content_type,
        size: i64::try_from(size).map_err(|_| StanzaError::bad_request())?,
        token_hash: token_hash(&token),
        created_micros: now,
        slot_expires_micros: now.saturating_add(slot_secs.saturating_mul(1_000_000)),
    };
    let quota = i64::try_from(limits.quota_per_user).unwrap_or(i64::MAX);
    match server.store.upload_create(&new, quota).await {
        Ok(UploadCreated::Created) => {}
        Ok(UploadCreated::OverQuota { used }) => {
            // §4, example 5: quota → resource-constraint (type wait).
            return Err(
                StanzaError::new(StanzaErrorCondition::ResourceConstraint).with_text(format!(
                    "Quota reached: {used} of {} bytes in use",
                    limits.quota_per_user
                )),
            );
        }
        Err(error) => {
            tracing::warn!(%error, "recording an upload slot");
            return Err(StanzaError::internal());
        }
    }
    tracing::debug!(user = owner, id = %id, size, "upload slot created");
    let url = file_url(server, &id, &filename);
    Ok(Element::new(NS, "slot")
        .child(
            Element::new(NS, "put").attr("url", url.as_str()).child(
                Element::new(NS, "header")
                    .attr("name", "Authorization")
                    .text(format!("Bearer {token}")),
            ),
        )
        .child(Element::new(NS, "get").attr("url", url)))
}

/// The public URL of an upload: `<base>/upload/<id>/<name>`, the name
/// percent-encoded as one path segment.
pub(crate) fn file_url(server: &Server, id: &str, filename: &str) -> String {
    let base = public_base(server);
    match url::Url::parse(&base) {
        Ok(mut url) => {
            if let Ok(mut segments) = url.path_segments_mut() {
                segments.pop_if_empty().extend(["upload", id, filename]);
            }
            url.to_string()
        }
        Err(_) => format!("{base}/upload/{id}/file"),
    }
}

fn public_base(server: &Server) -> String {
    if let Some(url) = &server.config.upload.public_url {
        return url.trim_end_matches('/').to_owned();
    }
    match (server.https_port(), server.http_port()) {
        (Some(port), _) => format!("https://{}:{port}", server.domain),
        (None, Some(port)) => format!("http://{}:{port}", server.domain),
        (None, None) => format!("https://{}", server.domain),
    }
}

/// A file name safe to keep and to put in a URL and a header: the last path
/// component, without control characters, at most 200 characters.
pub(crate) fn clean_filename(given: &str) -> String {
    let last = given.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_FILENAME_CHARS)
        .collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() || cleaned == "." || cleaned == ".." {
        "file".to_owned()
    } else {
        cleaned.to_owned()
    }
}

/// `type/subtype` in lower case without parameters, or `None` if it isn't one.
pub(crate) fn normalize_content_type(given: &str) -> Option<String> {
    let essence = given.split(';').next()?.trim().to_ascii_lowercase();
    let (kind, sub) = essence.split_once('/')?;
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    (token(kind) && token(sub)).then_some(essence)
}

fn type_allowed(allowed: &[String], content_type: &str) -> bool {
    if allowed.is_empty() {
        return true;
    }
    allowed.iter().any(|pattern| {
        let pattern = pattern.to_ascii_lowercase();
        match pattern.strip_suffix("/*") {
            Some(family) => content_type
                .split_once('/')
                .is_some_and(|(kind, _)| kind == family),
            None => pattern == content_type,
        }
    })
}

/// `bytes` random bytes, base64url: ids carry 192 bits, tokens 256 (≥ 128
/// asked for by the slot URL's unguessability).
fn random_token(bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw)
}

pub(crate) fn token_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The blob key of an upload's thumbnail.
pub(crate) fn thumb_key(id: &str) -> String {
    format!("{id}.thumb.jpg")
}

/// Deletes one upload: blobs first, then the record.
async fn remove(server_store: &Store, blobs: &Blobs, id: &str) -> anyhow::Result<()> {
    blobs.delete(id).await?;
    blobs.delete(&thumb_key(id)).await?;
    server_store.upload_delete(id).await?;
    Ok(())
}

/// Deletes every upload of `username` (account deletion). Used by in-band
/// removal (XEP-0077) and by `kith user del`, which has no running server:
/// hence the configuration and store rather than a `Server`.
pub async fn purge_user_files(
    config: &Config,
    store: &Store,
    username: &str,
) -> anyhow::Result<usize> {
    if !config.upload.enabled {
        return Ok(0);
    }
    let blobs = Blobs::from_config(config)?;
    purge_with(store, &blobs, username).await
}

pub(crate) async fn purge_with(
    store: &Store,
    blobs: &Blobs,
    username: &str,
) -> anyhow::Result<usize> {
    let ids = store.uploads_of(username).await?;
    for id in &ids {
        remove(store, blobs, id).await?;
    }
    if !ids.is_empty() {
        tracing::info!(
            user = username,
            files = ids.len(),
            "deleted the account's uploads"
        );
    }
    Ok(ids.len())
}

/// Sweeps expired slots and files every `sweep_interval_secs`.
pub(crate) async fn sweep_loop(server: Arc<Server>) {
    let Some(service) = &server.upload else {
        return;
    };
    let interval = Duration::from_secs(server.config.upload.sweep_interval_secs);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        match sweep(&server.store, &service.blobs).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(uploads = n, "removed expired uploads"),
            Err(error) => tracing::warn!(%error, "sweeping uploads"),
        }
    }
}

/// One sweep: removes what has expired; returns how many uploads went.
pub(crate) async fn sweep(store: &Store, blobs: &Blobs) -> anyhow::Result<usize> {
    let mut removed = 0;
    loop {
        let now = crate::now_micros();
        let stale = now - STALE_UPLOAD_SECS * 1_000_000;
        let ids = store.uploads_to_sweep(now, stale, SWEEP_BATCH).await?;
        for id in &ids {
            remove(store, blobs, id).await?;
        }
        removed += ids.len();
        if (ids.len() as i64) < SWEEP_BATCH {
            return Ok(removed);
        }
    }
}

/// Derives metadata from a stored file, off the request path: a thumbnail and
/// BlurHash for images, the duration of Ogg Opus audio. Always records a
/// metadata document (possibly empty), so `?meta` can say it is ready.
pub(crate) fn spawn_processing(server: Arc<Server>, id: String, content_type: String, size: u64) {
    tokio::spawn(async move {
        let Some(service) = &server.upload else {
            return;
        };
        let Ok(_permit) = service.processing.clone().acquire_owned().await else {
            return;
        };
        let meta = derive_meta(&server, service, &id, &content_type, size).await;
        if let Err(error) = server.store.upload_set_meta(&id, &meta.to_string()).await {
            tracing::warn!(%error, "recording upload metadata");
        }
    });
}

async fn derive_meta(
    server: &Server,
    service: &Service,
    id: &str,
    content_type: &str,
    size: u64,
) -> serde_json::Value {
    let limits = &server.config.upload;
    let mut meta = serde_json::Map::new();
    if media::is_thumbnailable(content_type) && size <= limits.thumbnail_max_bytes {
        match service
            .blobs
            .read_small(id, limits.thumbnail_max_bytes)
            .await
        {
            Ok(bytes) => {
                let (edge, max_pixels) = (limits.thumbnail_size, limits.thumbnail_max_pixels);
                let made =
                    tokio::task::spawn_blocking(move || media::thumbnail(&bytes, edge, max_pixels))
                        .await;
                match made {
                    Ok(Ok(thumb)) => {
                        let thumb_size = thumb.jpeg.len();
                        match service
                            .blobs
                            .put(&thumb_key(id), bytes::Bytes::from(thumb.jpeg))
                            .await
                        {
                            Ok(()) => {
                                meta.insert("width".into(), thumb.width.into());
                                meta.insert("height".into(), thumb.height.into());
                                meta.insert("blurhash".into(), thumb.blurhash.into());
                                meta.insert(
                                    "thumbnail".into(),
                                    serde_json::json!({
                                        "media_type": "image/jpeg",
                                        "width": thumb.thumb_width,
                                        "height": thumb.thumb_height,
                                        "size": thumb_size,
                                    }),
                                );
                            }
                            Err(error) => tracing::warn!(%error, "storing a thumbnail"),
                        }
                    }
                    Ok(Err(error)) => tracing::debug!(%error, id, "no thumbnail"),
                    Err(error) => tracing::warn!(%error, "thumbnail task failed"),
                }
            }
            Err(error) => tracing::warn!(%error, "reading an upload for its thumbnail"),
        }
    } else if media::is_ogg(content_type) {
        const HEAD: u64 = 4096;
        const TAIL: u64 = 65_536;
        let head = service.blobs.read_range(id, 0..HEAD.min(size)).await;
        let tail = service
            .blobs
            .read_range(id, size.saturating_sub(TAIL)..size)
            .await;
        if let (Ok(head), Ok(tail)) = (head, tail)
            && let Some(seconds) = media::ogg_opus_duration(&head, &tail)
        {
            meta.insert("duration_secs".into(), seconds.into());
        }
    }
    serde_json::Value::Object(meta)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_lose_paths_and_controls() {
        assert_eq!(clean_filename("../../etc/passwd"), "passwd");
        assert_eq!(clean_filename("C:\\x\\y.txt"), "y.txt");
        assert_eq!(clean_filename("a\u{0}b\nc.jpg"), "abc.jpg");
        assert_eq!(clean_filename(".."), "file");
        assert_eq!(clean_filename(""), "file");
        assert_eq!(clean_filename("très cool.jpg"), "très cool.jpg");
        assert_eq!(clean_filename(&"x".repeat(500)).len(), 200);
    }

    #[test]
    fn content_types_are_normalised() {
        assert_eq!(
            normalize_content_type("Image/JPEG; charset=x").as_deref(),
            Some("image/jpeg")
        );
        assert_eq!(normalize_content_type("jpeg"), None);
        assert_eq!(normalize_content_type("a/b c"), None);
        assert_eq!(normalize_content_type("/x"), None);
    }

    #[test]
    fn allowed_types_match_exactly_or_by_family() {
        let allowed = vec!["image/*".to_owned(), "application/pdf".to_owned()];
        assert!(type_allowed(&allowed, "image/png"));
        assert!(type_allowed(&allowed, "application/pdf"));
        assert!(!type_allowed(&allowed, "text/html"));
        assert!(!type_allowed(&allowed, "imagex/png"));
        assert!(type_allowed(&[], "text/html"));
    }

    #[test]
    fn tokens_carry_enough_randomness() {
        let a = random_token(24);
        assert_eq!(a.len(), 32);
        assert_ne!(a, random_token(24));
        assert_eq!(token_hash("x").len(), 64);
    }
}
