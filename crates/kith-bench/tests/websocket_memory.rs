//! What an idle XMPP-over-WebSocket session costs a real kith server in memory
//! and CPU, measured by kith-bench's `idle` scenario. A process of its own (its
//! own test binary): the server runs in it, so the RSS and the CPU time are
//! the server's.

mod common;

use anyhow::{Context, Result};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_websocket_session_holds_no_large_buffers_and_costs_no_cpu() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let running = common::kith(dir.path()).await?;
    let url = format!(
        "ws://{}/xmpp-websocket",
        running.http.context("no HTTP listener")?
    );
    let transport = vec!["--websocket".to_owned(), url, "--no-tls".to_owned()];
    let report = common::idle_report(dir.path(), transport).await?;
    // The transport's buffers were 128 KiB a session before they were sized for
    // stanzas, then 4 KiB of read buffer (≈ 9.1 KiB a session here); with 1 KiB
    // this test measured 6.1 KiB (`ws://`, no TLS).
    let marginal = common::marginal_bytes(&report)?;
    assert!(
        marginal < 8.0 * 1024.0,
        "an idle WebSocket session adds {:.1} KiB: {report}",
        marginal / 1024.0
    );
    // Sessions that do nothing cost (almost) nothing: no timer, poll or
    // keep-alive per session that wakes the server (19,000 idle TLS sessions
    // cost it 0.5 ms of CPU a second in BENCHMARKS.md). A session spinning on
    // its socket would show as hundreds of ms a second.
    let cpu = report["results"]["held_cpu_ms_per_s"]
        .as_f64()
        .context("no CPU figure")?;
    assert!(
        cpu < 100.0,
        "600 idle WebSocket sessions cost the server {cpu:.1} ms of CPU a second: {report}"
    );
    running.shutdown().await;
    Ok(())
}
