//! kith-bench against a real kith server (started in-process, SQLite in a
//! temporary directory) over both of XMPP's client transports: TCP and
//! WebSocket (RFC 7395). Each run provisions accounts by in-band registration,
//! runs a short chat step and the offline scenario; what the tool reports must
//! add up.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

/// Runs kith-bench with `args` and returns the JSON it wrote.
fn kith_bench(dir: &Path, transport: &[String], args: &[&str]) -> Result<Value> {
    let json = dir.join("out.json");
    let _ = std::fs::remove_file(&json);
    let json_arg = json.to_string_lossy().into_owned();
    let mut all: Vec<&str> = transport.iter().map(String::as_str).collect();
    all.extend([
        "--no-tls",
        "--sources",
        "1",
        "--max-secs",
        "60",
        "--json",
        &json_arg,
    ]);
    all.extend(args);
    common::kith_bench(dir, &all, Duration::from_secs(90))?;
    Ok(serde_json::from_slice(&std::fs::read(&json)?)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_over_tcp_and_websocket_delivers_everything() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let running = common::kith(dir.path()).await?;
    let plain = running.c2s_plain.context("no plain c2s listener")?;
    let http = running.http.context("no HTTP listener")?;
    let transports = [
        ("tcp", vec!["--target".to_owned(), plain.to_string()]),
        (
            "websocket",
            vec![
                "--websocket".to_owned(),
                format!("ws://{http}/xmpp-websocket"),
            ],
        ),
    ];
    for (first, (name, transport)) in [(1, &transports[0]), (11, &transports[1])] {
        let dir = dir.path().to_owned();
        let transport = transport.clone();
        let first = first.to_string();
        let (registered, chat, offline) = tokio::task::spawn_blocking(move || -> Result<_> {
            let registered = kith_bench(
                &dir,
                &transport,
                &["register", "--users", "4", "--first", &first],
            )?;
            let chat = kith_bench(
                &dir,
                &transport,
                &[
                    "chat",
                    "--users",
                    "4",
                    "--first",
                    &first,
                    "--rates",
                    "40",
                    "--step-secs",
                    "2",
                    "--drain-secs",
                    "1",
                ],
            )?;
            // Closes its connections and waits for the server's side to close.
            let offline = kith_bench(
                &dir,
                &transport,
                &[
                    "offline",
                    "--messages",
                    "300",
                    "--first",
                    &first,
                    "--wait-secs",
                    "20",
                ],
            )?;
            Ok((registered, chat, offline))
        })
        .await??;
        assert_eq!(registered["transport"], *name, "{registered}");
        assert_eq!(
            registered["results"]["created"], 4,
            "{name}: every account is new: {registered}"
        );
        assert_eq!(chat["transport"], *name);
        let step = &chat["results"]["steps"][0];
        let sent = step["sent"].as_u64().context("sent")?;
        assert!(
            sent >= 60,
            "{name}: 40 msg/s for 2 s sends about 80: {step}"
        );
        assert_eq!(step["received"], sent, "{name}: everything arrives: {step}");
        assert_eq!(step["lost"], 0, "{name}: {step}");
        assert_eq!(step["stanza_errors"], 0, "{name}: {step}");
        assert_eq!(step["disconnects"], 0, "{name}: {step}");
        assert_eq!(chat["errors"], serde_json::json!({}), "{name}: {chat}");
        // One step, held (a debug build at 40 msg/s on loopback): the highest
        // rate held, and every step up to it held.
        if step["held"] == true {
            assert_eq!(chat["results"]["highest_rate_held"], 40, "{name}: {chat}");
            assert_eq!(
                chat["results"]["highest_rate_held_throughout"], 40,
                "{name}: {chat}"
            );
        }
        assert_eq!(offline["transport"], *name);
        assert_eq!(
            offline["results"]["delivered"], 300,
            "{name}: a user offline gets every message at login: {offline}"
        );
        assert_eq!(
            offline["errors"],
            serde_json::json!({}),
            "{name}: {offline}"
        );
    }
    running.shutdown().await;
    Ok(())
}
