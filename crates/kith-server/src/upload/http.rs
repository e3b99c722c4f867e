//! The HTTP side of XEP-0363 at `/upload/<id>/<name>`: one PUT per slot (§5,
//! with the slot's `Authorization` header, the exact size and type), and GET /
//! HEAD with single byte ranges (RFC 7233 §2.1, §4.1 206, §4.4 416), ETag and
//! `If-None-Match` (RFC 7232 §3.2, 304), CORS for web clients, and headers that
//! keep an uploaded file from attacking the web client: `nosniff`, a sandboxing
//! CSP, and `Content-Disposition: attachment` for anything not plain media.
//! `?thumb` serves the thumbnail, `?meta` the metadata document (JSON).

use std::ops::Range;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use futures::StreamExt;
use kith_store::{Upload, UploadState};

use super::{thumb_key, token_hash};
use crate::Server;

/// Served on every upload response: no MIME sniffing, and a CSP under which an
/// uploaded document can run nothing and load nothing (`sandbox` also gives it
/// an opaque origin).
const CSP: &str = "default-src 'none'; sandbox";

pub(crate) fn routes(server: Arc<Server>) -> Router {
    Router::new()
        .route("/upload/{id}/{name}", any(file))
        .layer(DefaultBodyLimit::disable())
        .with_state(server)
}

async fn file(
    State(server): State<Arc<Server>>,
    Path((id, _name)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    method: Method,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if server.upload.is_none() {
        return status(StatusCode::NOT_FOUND, "no upload service");
    }
    let response = match method {
        Method::OPTIONS => preflight(),
        Method::PUT => put(&server, &id, &headers, body).await,
        Method::GET | Method::HEAD => {
            get(
                &server,
                &id,
                query.as_deref(),
                &headers,
                method == Method::HEAD,
            )
            .await
        }
        _ => status(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"),
    };
    with_common_headers(response)
}

fn with_common_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(
            "Content-Length, Content-Range, Content-Disposition, Accept-Ranges, ETag",
        ),
    );
    response
}

fn status(code: StatusCode, text: &'static str) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// CORS preflight (Fetch standard): a web client on another origin may PUT
/// with `Authorization` and `Content-Type`, and GET/HEAD with `Range`.
fn preflight() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                "GET, HEAD, PUT, OPTIONS",
            ),
            (
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "Authorization, Content-Type, Range, If-None-Match",
            ),
            (header::ACCESS_CONTROL_MAX_AGE, "86400"),
        ],
    )
        .into_response()
}

/// §5: the PUT must carry the slot's `Authorization` header, the announced
/// Content-Type and exactly the announced size; a slot takes one PUT. The body
/// streams into the blob store; nothing is served until it is complete.
async fn put(server: &Arc<Server>, id: &str, headers: &HeaderMap, body: Body) -> Response {
    let Some(service) = &server.upload else {
        return status(StatusCode::NOT_FOUND, "no upload service");
    };
    let upload = match server.store.upload_get(id).await {
        Ok(Some(upload)) => upload,
        Ok(None) => return status(StatusCode::NOT_FOUND, "no such slot"),
        Err(error) => {
            tracing::warn!(%error, "reading an upload slot");
            return status(StatusCode::INTERNAL_SERVER_ERROR, "storage error");
        }
    };
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if token.is_none_or(|token| token_hash(token) != upload.token_hash) {
        return status(StatusCode::FORBIDDEN, "wrong or missing slot token");
    }
    if upload.state != UploadState::Slot {
        return status(StatusCode::CONFLICT, "this slot was already used");
    }
    let expected = u64::try_from(upload.size).unwrap_or(0);
    if let Some(length) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if length > expected {
            return status(StatusCode::PAYLOAD_TOO_LARGE, "larger than the slot's size");
        }
        if length < expected {
            return status(StatusCode::BAD_REQUEST, "smaller than the slot's size");
        }
    }
    let given_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(super::normalize_content_type);
    if given_type.as_deref() != Some(upload.content_type.as_str()) {
        return status(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type differs from the slot's",
        );
    }
    match server.store.upload_begin(id, crate::now_micros()).await {
        Ok(true) => {}
        Ok(false) => return status(StatusCode::CONFLICT, "slot used or expired"),
        Err(error) => {
            tracing::warn!(%error, "claiming an upload slot");
            return status(StatusCode::INTERNAL_SERVER_ERROR, "storage error");
        }
    }
    // From here on the slot is spent: any failure deletes its record.
    let mut writer = service.blobs.writer(id);
    let mut stream = body.into_data_stream();
    let mut received: u64 = 0;
    let outcome = loop {
        match stream.next().await {
            None => break Ok(()),
            Some(Err(error)) => {
                tracing::debug!(%error, id, "upload body failed (client gone?)");
                break Err(status(StatusCode::BAD_REQUEST, "upload interrupted"));
            }
            Some(Ok(chunk)) => {
                received += chunk.len() as u64;
                if received > expected {
                    break Err(status(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "larger than the slot's size",
                    ));
                }
                if let Err(error) = writer.write(chunk).await {
                    tracing::warn!(%error, "writing an upload");
                    break Err(status(StatusCode::INTERNAL_SERVER_ERROR, "storage error"));
                }
            }
        }
    };
    let outcome = match outcome {
        Ok(()) if received != expected => Err(status(
            StatusCode::BAD_REQUEST,
            "smaller than the slot's size",
        )),
        other => other,
    };
    if let Err(response) = outcome {
        writer.abort().await;
        let _ = server.store.upload_delete(id).await;
        return response;
    }
    if let Err(error) = writer.finish().await {
        tracing::warn!(%error, "completing an upload");
        let _ = server.store.upload_delete(id).await;
        let _ = service.blobs.delete(id).await;
        return status(StatusCode::INTERNAL_SERVER_ERROR, "storage error");
    }
    let keep = i64::try_from(server.config.upload.expire_after_secs)
        .unwrap_or(i64::MAX / 2_000_000)
        .saturating_mul(1_000_000);
    match server
        .store
        .upload_finish(id, crate::now_micros().saturating_add(keep))
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            // Swept or purged while uploading (account deleted): drop the bytes.
            let _ = service.blobs.delete(id).await;
            return status(StatusCode::GONE, "slot removed during upload");
        }
        Err(error) => {
            tracing::warn!(%error, "finishing an upload");
            let _ = service.blobs.delete(id).await;
            let _ = server.store.upload_delete(id).await;
            return status(StatusCode::INTERNAL_SERVER_ERROR, "storage error");
        }
    }
    tracing::debug!(id, size = expected, "upload stored");
    super::spawn_processing(server.clone(), id.to_owned(), upload.content_type, expected);
    (
        StatusCode::CREATED,
        [(
            header::LOCATION,
            super::file_url(server, id, &upload.filename),
        )],
    )
        .into_response()
}

/// GET and HEAD of a stored file (or, with `?thumb` / `?meta`, of what was
/// derived from it).
async fn get(
    server: &Arc<Server>,
    id: &str,
    query: Option<&str>,
    headers: &HeaderMap,
    head: bool,
) -> Response {
    let Some(service) = &server.upload else {
        return status(StatusCode::NOT_FOUND, "no upload service");
    };
    let upload = match server.store.upload_get(id).await {
        Ok(Some(upload))
            if upload.state == UploadState::Stored
                && upload
                    .expires_micros
                    .is_some_and(|at| at > crate::now_micros()) =>
        {
            upload
        }
        Ok(_) => return status(StatusCode::NOT_FOUND, "no such file"),
        Err(error) => {
            tracing::warn!(%error, "reading an upload");
            return status(StatusCode::INTERNAL_SERVER_ERROR, "storage error");
        }
    };
    match query {
        Some("meta") => return meta_document(server, &upload),
        Some("thumb") => {
            let Some(size) = thumbnail_size(&upload) else {
                return status(StatusCode::NOT_FOUND, "no thumbnail");
            };
            let file = Served {
                key: thumb_key(id),
                etag: format!("\"{id}-thumb\""),
                size,
                content_type: "image/jpeg".to_owned(),
                filename: format!("{}.thumb.jpg", upload.filename),
            };
            return serve(service, &file, headers, head).await;
        }
        _ => {}
    }
    let file = Served {
        key: id.to_owned(),
        etag: format!("\"{id}\""),
        size: u64::try_from(upload.size).unwrap_or(0),
        content_type: upload.content_type.clone(),
        filename: upload.filename.clone(),
    };
    serve(service, &file, headers, head).await
}

struct Served {
    key: String,
    etag: String,
    size: u64,
    content_type: String,
    filename: String,
}

async fn serve(
    service: &super::Service,
    file: &Served,
    headers: &HeaderMap,
    head: bool,
) -> Response {
    // RFC 7232 §3.2: a matching If-None-Match on GET/HEAD is answered 304.
    if let Some(tags) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        && (tags.trim() == "*" || tags.split(',').any(|t| t.trim() == file.etag))
    {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, file.etag.clone())],
        )
            .into_response();
    }
    // RFC 7233 §3.2: a Range with an If-Range that doesn't match is ignored.
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .is_none_or(|tag| tag.trim() == file.etag);
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(value) if if_range_ok => match parse_range(value, file.size) {
            RangeRequest::Satisfiable(range) => Some(range),
            RangeRequest::Ignore => None,
            RangeRequest::Unsatisfiable => {
                return (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{}", file.size))],
                )
                    .into_response();
            }
        },
        _ => None,
    };
    let (code, length) = match &range {
        Some(r) => (StatusCode::PARTIAL_CONTENT, r.end - r.start),
        None => (StatusCode::OK, file.size),
    };
    let mut builder = Response::builder()
        .status(code)
        .header(header::CONTENT_TYPE, file.content_type.as_str())
        .header(header::CONTENT_LENGTH, length)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, file.etag.as_str())
        .header(header::CACHE_CONTROL, "private, max-age=86400, immutable")
        .header(
            header::CONTENT_DISPOSITION,
            content_disposition(&file.content_type, &file.filename),
        );
    if let Some(r) = &range {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{}", r.start, r.end - 1, file.size),
        );
    }
    if head || length == 0 {
        return builder
            .body(Body::empty())
            .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR, "bad response"));
    }
    let stream = match service.blobs.read(&file.key, range).await {
        Ok(stream) => stream,
        Err(super::blob::BlobError::NotFound) => {
            return status(StatusCode::NOT_FOUND, "no such file");
        }
        Err(error) => {
            tracing::warn!(%error, "reading an upload");
            return status(StatusCode::INTERNAL_SERVER_ERROR, "storage error");
        }
    };
    builder
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| status(StatusCode::INTERNAL_SERVER_ERROR, "bad response"))
}

/// What a `Range` header asks for, for a representation of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
enum RangeRequest {
    Satisfiable(Range<u64>),
    /// Not a single byte range we serve (multiple ranges, other units, syntax
    /// errors): RFC 7233 §3.1 lets the server ignore it and send the whole file.
    Ignore,
    Unsatisfiable,
}

/// RFC 7233 §2.1: `bytes=first-last`, `bytes=first-`, `bytes=-suffix`.
fn parse_range(value: &str, size: u64) -> RangeRequest {
    let Some(spec) = value.trim().strip_prefix("bytes=") else {
        return RangeRequest::Ignore;
    };
    if spec.contains(',') {
        return RangeRequest::Ignore;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Ignore;
    };
    let number = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match number(suffix) {
            None => RangeRequest::Ignore,
            // §2.1: a zero-length suffix is unsatisfiable.
            Some(0) => RangeRequest::Unsatisfiable,
            Some(_) if size == 0 => RangeRequest::Unsatisfiable,
            Some(n) => RangeRequest::Satisfiable(size.saturating_sub(n)..size),
        },
        (first, last) => {
            let Some(start) = number(first) else {
                return RangeRequest::Ignore;
            };
            let end = match last {
                "" => size,
                last => match number(last) {
                    Some(end) if end >= start => end.saturating_add(1).min(size),
                    _ => return RangeRequest::Ignore,
                },
            };
            if start >= size {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Satisfiable(start..end)
            }
        }
    }
}

/// Types a browser may show inline: raster images, audio, video and PDF.
/// Everything else — HTML, SVG, XML, scripts, unknown types — downloads.
fn is_inline_safe(content_type: &str) -> bool {
    matches!(
        content_type,
        "image/jpeg"
            | "image/png"
            | "image/gif"
            | "image/webp"
            | "image/avif"
            | "image/heic"
            | "image/heif"
            | "application/pdf"
    ) || content_type.starts_with("audio/")
        || content_type.starts_with("video/")
}

/// RFC 6266 with an RFC 8187 `filename*` for non-ASCII names.
fn content_disposition(content_type: &str, filename: &str) -> String {
    let disposition = if is_inline_safe(content_type) {
        "inline"
    } else {
        "attachment"
    };
    let ascii: String = filename
        .chars()
        .map(|c| {
            if c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for byte in filename.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    format!("{disposition}; filename=\"{ascii}\"; filename*=UTF-8''{encoded}")
}

fn thumbnail_size(upload: &Upload) -> Option<u64> {
    let meta: serde_json::Value = serde_json::from_str(upload.meta.as_deref()?).ok()?;
    meta.get("thumbnail")?.get("size")?.as_u64()
}

/// `?meta`: what a client needs to compose a XEP-0447 file-sharing element
/// (name, size, type, dimensions, BlurHash, thumbnail URL, duration).
/// `status` is `pending` until the server has looked at the file.
fn meta_document(server: &Server, upload: &Upload) -> Response {
    let url = super::file_url(server, &upload.id, &upload.filename);
    let mut doc = serde_json::json!({
        "url": url,
        "name": upload.filename,
        "size": upload.size,
        "content_type": upload.content_type,
        "status": if upload.meta.is_some() { "ready" } else { "pending" },
    });
    let derived = upload
        .meta
        .as_deref()
        .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok());
    if let (Some(serde_json::Value::Object(derived)), Some(doc)) = (derived, doc.as_object_mut()) {
        for (key, mut value) in derived {
            if key == "thumbnail"
                && let Some(thumb) = value.as_object_mut()
            {
                thumb.insert("url".into(), format!("{url}?thumb").into());
            }
            doc.insert(key, value);
        }
    }
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        doc.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges() {
        use RangeRequest::*;
        assert_eq!(parse_range("bytes=0-9", 100), Satisfiable(0..10));
        assert_eq!(parse_range("bytes=90-", 100), Satisfiable(90..100));
        assert_eq!(parse_range("bytes=90-200", 100), Satisfiable(90..100));
        assert_eq!(parse_range("bytes=-10", 100), Satisfiable(90..100));
        assert_eq!(parse_range("bytes=-1000", 100), Satisfiable(0..100));
        assert_eq!(parse_range("bytes=100-", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 100), Unsatisfiable);
        assert_eq!(parse_range("bytes=5-2", 100), Ignore);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ignore);
        assert_eq!(parse_range("items=0-1", 100), Ignore);
        assert_eq!(parse_range("bytes=x-1", 100), Ignore);
    }

    #[test]
    fn only_media_is_inline() {
        assert!(content_disposition("image/png", "a.png").starts_with("inline;"));
        assert!(content_disposition("audio/ogg", "a.ogg").starts_with("inline;"));
        for kind in [
            "text/html",
            "image/svg+xml",
            "application/javascript",
            "text/xml",
        ] {
            assert!(
                content_disposition(kind, "x").starts_with("attachment;"),
                "{kind}"
            );
        }
        assert_eq!(
            content_disposition("application/zip", "très \"x\".zip"),
            "attachment; filename=\"tr_s _x_.zip\"; filename*=UTF-8''tr%C3%A8s%20%22x%22.zip"
        );
    }
}
