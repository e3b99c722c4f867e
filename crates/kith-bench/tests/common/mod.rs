//! What the tests that run kith-bench against kith share.

// Each test binary uses some of it: a server, kith-bench, the idle measurements.
#![allow(dead_code)]

use std::path::Path;

use anyhow::Context;

/// A kith server in this process with its data in `dir`: a loopback c2s port
/// without TLS and an HTTP listener (XMPP over WebSocket), both on free ports,
/// and in-band registration open without a rate limit (kith-bench provisions
/// its accounts that way).
pub async fn kith(dir: &Path) -> anyhow::Result<kith_server::Running> {
    kith_with(dir, |_| {}).await
}

/// [`kith`] with `adjust` applied to its configuration first.
pub async fn kith_with(
    dir: &Path,
    adjust: impl FnOnce(&mut kith_server::Config),
) -> anyhow::Result<kith_server::Running> {
    let mut config = kith_server::Config::default();
    config.server.data_dir = dir.join("data");
    config.listen.c2s = String::new();
    config.listen.c2s_tls = String::new();
    config.listen.https = String::new();
    config.listen.stun = String::new();
    config.listen.c2s_plain = "127.0.0.1:0".to_owned();
    config.listen.http = "127.0.0.1:0".to_owned();
    config.registration.enabled = Some(true);
    config.registration.max_per_ip_per_hour = 1_000_000;
    config.limits.max_connections_per_ip = 10_000;
    adjust(&mut config);
    kith_server::Server::start(config).await
}

/// Runs kith-bench with `args`, its output in files under `dir`. Past `limit`
/// it is killed and the run fails: a load generator that hangs must fail the
/// test, not hang it.
pub fn kith_bench(dir: &Path, args: &[&str], limit: std::time::Duration) -> anyhow::Result<()> {
    use std::fs::File;
    let (out, err) = (dir.join("kith-bench.out"), dir.join("kith-bench.err"));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kith-bench"))
        .args(args)
        .stdout(File::create(&out)?)
        .stderr(File::create(&err)?)
        .spawn()?;
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let output = || {
        format!(
            "{}{}",
            std::fs::read_to_string(&out).unwrap_or_default(),
            std::fs::read_to_string(&err).unwrap_or_default()
        )
    };
    match status {
        Some(status) if status.success() => Ok(()),
        Some(status) => anyhow::bail!("kith-bench {args:?} failed ({status}): {}", output()),
        None => anyhow::bail!(
            "kith-bench {args:?} did not finish in {limit:?}: {}",
            output()
        ),
    }
}

/// What kith-bench's `idle` scenario reports for 600 sessions held on the
/// server in this process over `transport` (kith-bench's arguments naming it).
pub async fn idle_report(dir: &Path, transport: Vec<String>) -> anyhow::Result<serde_json::Value> {
    let json = dir.join("idle.json");
    let pid = std::process::id().to_string();
    let work = dir.to_owned();
    let json_arg = json.to_string_lossy().into_owned();
    tokio::task::spawn_blocking(move || {
        let bench = |args: &[&str]| {
            let mut all: Vec<&str> = transport.iter().map(String::as_str).collect();
            all.extend([
                "--sources",
                "1",
                "--max-secs",
                "120",
                "--server-pid",
                &pid,
                "--json",
                &json_arg,
            ]);
            all.extend(args);
            kith_bench(&work, &all, std::time::Duration::from_secs(180))
        };
        bench(&["register", "--users", "600", "--concurrency", "32"])?;
        bench(&[
            "idle",
            "--checkpoints",
            "100,600",
            "--concurrency",
            "32",
            "--settle-secs",
            "1",
            "--hold-secs",
            "3",
        ])
    })
    .await??;
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json)?)?;
    let last = report["results"]["checkpoints"]
        .as_array()
        .and_then(|points| points.last())
        .context("no RSS points")?;
    assert_eq!(last["sessions"], 600, "{report}");
    Ok(report)
}

/// Between the two checkpoints: what each of 500 more sessions added.
pub fn marginal_bytes(report: &serde_json::Value) -> anyhow::Result<f64> {
    report["results"]["checkpoints"]
        .as_array()
        .and_then(|points| points.last())
        .and_then(|last| last["marginal_bytes_per_session"].as_f64())
        .context("no marginal figure")
}
