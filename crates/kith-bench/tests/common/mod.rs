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
