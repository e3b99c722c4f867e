//! Prometheus metrics (DESIGN.md's operations row) at `GET /metrics` on the
//! HTTP(S) listeners, in the text exposition format (version 0.0.4): what this
//! node holds (sessions, connections), the queues that show it falling behind
//! (the inbox-log writer's, push's, the cluster's outbox), what the writer has
//! taken on, and the process (memory, CPU time, open files). Everything is
//! read at the scrape from state the server keeps anyway: nothing on a
//! message's path counts for metrics alone.
//!
//! Access (`[metrics]`): loopback addresses only (a request a proxy says it
//! relayed is not local), unless a token is set; then any address with
//! `Authorization: Bearer <token>`, and no other.

use std::fmt::Write as _;
use std::net::IpAddr;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::Server;
use crate::http::{AppState, PeerAddr};

/// The exposition format's media type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`.
pub(crate) async fn scrape(
    State(state): State<AppState>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    headers: HeaderMap,
) -> Response {
    let config = &state.server.config.metrics;
    if !config.enabled {
        return StatusCode::NOT_FOUND.into_response();
    }
    match allowed(config.token.as_deref(), peer.ip(), &headers) {
        Access::Granted => {}
        Access::NotLoopback => {
            return (
                StatusCode::FORBIDDEN,
                "metrics are served to loopback addresses only, not relayed ([metrics] token opens them)",
            )
                .into_response();
        }
        Access::NoToken => {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a bearer token is required",
            )
                .into_response();
        }
    }
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        render(&state.server),
    )
        .into_response()
}

/// Whether a request may read the metrics.
#[derive(Debug, PartialEq, Eq)]
enum Access {
    Granted,
    /// No token is set and the request is not from a loopback address.
    NotLoopback,
    /// A token is set and the request does not carry it.
    NoToken,
}

fn allowed(token: Option<&str>, peer: IpAddr, headers: &HeaderMap) -> Access {
    let Some(token) = token else {
        // A request relayed by a proxy on this host comes from loopback too:
        // one that says it was relayed (RFC 7239, or the de facto headers)
        // is not taken for local.
        let relayed = ["forwarded", "x-forwarded-for", "x-real-ip"]
            .iter()
            .any(|name| headers.contains_key(*name));
        return match peer.to_canonical().is_loopback() && !relayed {
            true => Access::Granted,
            false => Access::NotLoopback,
        };
    };
    // RFC 6750 §2.1 / RFC 9110 §11.1: the scheme's name is case-insensitive.
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, credentials)| credentials.trim());
    match given {
        Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => Access::Granted,
        _ => Access::NoToken,
    }
}

/// Compares without stopping at the first difference (the token is a secret).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One metric family in the text format.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn start<'a>(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (label, text)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{label}=\"{}\"", escape_label(text));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// A label value as the format wants it: backslash, quote and newline escaped.
fn escape_label(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A family with one sample and no labels.
fn single(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    Family::start(out, name, kind, help).sample(name, &[], value);
}

/// The metrics as the format has them.
pub(crate) fn render(server: &Server) -> String {
    let mut out = String::with_capacity(4096);
    Family::start(
        &mut out,
        "kith_build_info",
        "gauge",
        "The running build (always 1).",
    )
    .sample(
        "kith_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1,
    );
    let census = server.router.census();
    single(
        &mut out,
        "kith_sessions",
        "gauge",
        "Bound client sessions on this node, including those waiting to be resumed.",
        census.sessions,
    );
    single(
        &mut out,
        "kith_sessions_detached",
        "gauge",
        "Sessions whose connection dropped, waiting to be resumed (XEP-0198).",
        census.detached,
    );
    single(
        &mut out,
        "kith_users_online",
        "gauge",
        "Users with at least one session on this node.",
        census.users,
    );
    single(
        &mut out,
        "kith_connections",
        "gauge",
        "Open client connections (TCP and WebSocket), signed in or not.",
        server.connections.open(),
    );
    let writer = server.store.writer_metrics();
    single(
        &mut out,
        "kith_inbox_writer_queue",
        "gauge",
        "Jobs (appends, acknowledgements) waiting for the inbox-log writer.",
        writer.queued,
    );
    single(
        &mut out,
        "kith_inbox_writer_batches_total",
        "counter",
        "Batches the inbox-log writer has taken (a commit each).",
        writer.batches,
    );
    single(
        &mut out,
        "kith_inbox_writer_jobs_total",
        "counter",
        "Jobs the inbox-log writer has taken.",
        writer.jobs,
    );
    single(
        &mut out,
        "kith_push_queue",
        "gauge",
        "Push notifications queued or in flight.",
        server.push.queued(),
    );
    if let Some(cluster) = &server.cluster {
        let link = cluster.metrics();
        single(
            &mut out,
            "kith_cluster_connected",
            "gauge",
            "Whether this node's link to NATS is up (1) or not (0).",
            u8::from(link.connected),
        );
        single(
            &mut out,
            "kith_cluster_outbox_bytes",
            "gauge",
            "Bytes of frames waiting for the NATS link (cluster.max_outbox_bytes at most).",
            link.outbox_bytes,
        );
        single(
            &mut out,
            "kith_cluster_frames_dropped_total",
            "counter",
            "Frames dropped: the outbox full, or larger than NATS takes.",
            link.dropped,
        );
        single(
            &mut out,
            "kith_cluster_groups_host",
            "gauge",
            "Whether this node hosts the cluster's group chats (1) or not (0).",
            u8::from(link.groups_host),
        );
    }
    if let Some(relay) = server.relay() {
        let relay = relay.metrics();
        single(
            &mut out,
            "kith_turn_allocations",
            "gauge",
            "Relayed addresses held for calls (TURN allocations).",
            relay.allocations,
        );
        single(
            &mut out,
            "kith_turn_relayed_datagrams_total",
            "counter",
            "Datagrams the TURN relay passed on, both ways.",
            relay.datagrams,
        );
        single(
            &mut out,
            "kith_turn_relayed_bytes_total",
            "counter",
            "Payload bytes the TURN relay passed on, both ways.",
            relay.bytes,
        );
    }
    process(&mut out);
    out
}

/// Linux's clock ticks per second in `/proc` (`USER_HZ`, fixed by its ABI).
const TICKS_PER_SECOND: f64 = 100.0;

/// The standard `process_*` metrics, from `/proc/self` (absent elsewhere).
fn process(out: &mut String) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok());
    if let Some(kib) = rss_kib {
        single(
            out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            kib * 1024,
        );
    }
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command's closing parenthesis (which may hold spaces):
    // utime and stime are fields 14 and 15 of the line, starttime field 22.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    if let (Some(utime), Some(stime)) = (field(14), field(15)) {
        single(
            out,
            "process_cpu_seconds_total",
            "counter",
            "User and system CPU time spent, in seconds.",
            (utime + stime) as f64 / TICKS_PER_SECOND,
        );
    }
    let boot = std::fs::read_to_string("/proc/stat").ok().and_then(|text| {
        text.lines()
            .find_map(|line| line.strip_prefix("btime "))
            .and_then(|b| b.trim().parse::<u64>().ok())
    });
    if let (Some(boot), Some(start)) = (boot, field(22)) {
        single(
            out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
            boot as f64 + start as f64 / TICKS_PER_SECOND,
        );
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        single(
            out,
            "process_open_fds",
            "gauge",
            "Open file descriptors.",
            entries.count(),
        );
    }
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("Max open files"))
                .and_then(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        });
    if let Some(max) = max_fds {
        single(
            out,
            "process_max_fds",
            "gauge",
            "The limit on open file descriptors.",
            max,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_without_a_token() {
        let headers = HeaderMap::new();
        for loopback in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            let ip = loopback.parse().expect("an address");
            assert_eq!(allowed(None, ip, &headers), Access::Granted, "{loopback}");
        }
        let ip = "10.0.0.7".parse().expect("an address");
        assert_eq!(allowed(None, ip, &headers), Access::NotLoopback);
        // Relayed by a proxy on this host: not local.
        let mut relayed = HeaderMap::new();
        relayed.insert("x-forwarded-for", "203.0.113.9".parse().expect("a value"));
        let local = "127.0.0.1".parse().expect("an address");
        assert_eq!(allowed(None, local, &relayed), Access::NotLoopback);
    }

    #[test]
    fn a_token_is_needed_from_everywhere_once_set() {
        let token = "s3cret-s3cret-s3cret";
        let (local, remote) = (
            "127.0.0.1".parse().expect("an address"),
            "10.0.0.7".parse().expect("an address"),
        );
        let mut headers = HeaderMap::new();
        assert_eq!(allowed(Some(token), local, &headers), Access::NoToken);
        headers.insert(
            header::AUTHORIZATION,
            "Bearer wrong".parse().expect("a value"),
        );
        assert_eq!(allowed(Some(token), remote, &headers), Access::NoToken);
        let bearer = format!("Bearer {token}").parse().expect("a value");
        headers.insert(header::AUTHORIZATION, bearer);
        assert_eq!(allowed(Some(token), remote, &headers), Access::Granted);
        let bearer = format!("bearer {token}").parse().expect("a value");
        headers.insert(header::AUTHORIZATION, bearer);
        assert_eq!(allowed(Some(token), remote, &headers), Access::Granted);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
