//! What the tests that run kith-bench against kith share.

use std::path::Path;

/// A kith server in this process with its data in `dir`: a loopback c2s port
/// without TLS and an HTTP listener (XMPP over WebSocket), both on free ports,
/// and in-band registration open without a rate limit (kith-bench provisions
/// its accounts that way).
pub async fn kith(dir: &Path) -> anyhow::Result<kith_server::Running> {
    let mut config = kith_server::Config::default();
    config.server.data_dir = dir.join("data");
    config.listen.c2s = String::new();
    config.listen.c2s_tls = String::new();
    config.listen.https = String::new();
    config.listen.c2s_plain = "127.0.0.1:0".to_owned();
    config.listen.http = "127.0.0.1:0".to_owned();
    config.registration.enabled = Some(true);
    config.registration.max_per_ip_per_hour = 1_000_000;
    config.limits.max_connections_per_ip = 10_000;
    kith_server::Server::start(config).await
}
