//! What an idle STARTTLS session (the c2s port every XMPP client uses) costs a
//! real kith server in memory, measured by kith-bench's `idle` scenario. A
//! process of its own (its own test binary): the server runs in it, so the RSS
//! is the server's.

mod common;

use anyhow::{Context, Result};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_tls_session_costs_under_ten_kilobytes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let running = common::kith_with(dir.path(), |config| {
        config.listen.c2s = "127.0.0.1:0".to_owned();
    })
    .await?;
    let c2s = running.c2s.context("no STARTTLS c2s listener")?;
    // The certificate kith made for itself on first start, and its CA.
    let ca = dir.path().join("data/tls/ca.pem");
    let transport = vec![
        "--target".to_owned(),
        c2s.to_string(),
        "--ca".to_owned(),
        ca.to_string_lossy().into_owned(),
    ];
    let report = common::idle_report(dir.path(), transport).await?;
    assert!(
        report["results"]["tls"]
            .as_str()
            .is_some_and(|tls| tls.starts_with("TLSv1_3")),
        "the sessions did not use TLS 1.3: {report}"
    );
    // Issue 8's target: at most 10 KB of server RSS per authenticated TLS
    // session (this debug build measures ≈ 7.4 KiB; the release build 6.7–7.4
    // past the first thousand, BENCHMARKS.md). It guards the whole session, not
    // one part: the session task's size has its own check as it is made
    // (`session::TASK_MAX_BYTES`).
    let marginal = common::marginal_bytes(&report)?;
    assert!(
        marginal < 10_000.0,
        "an idle TLS session adds {:.1} KiB: {report}",
        marginal / 1024.0
    );
    running.shutdown().await;
    Ok(())
}
