//! kith-bench's three ways to sign in (`--auth classic|sasl2|fast`) against a
//! real kith server (in-process, SQLite, STARTTLS: SASL2 is offered only
//! after TLS). Each login scenario must bring every user up, and the JID it
//! reports must be the kind of resource each way binds.

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_classic_sasl2_and_fast_all_come_up() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let running = common::kith_with(dir.path(), |config| {
        config.listen.c2s = "127.0.0.1:0".to_owned();
    })
    .await?;
    let starttls = running.c2s.context("no STARTTLS listener")?.to_string();
    let path = dir.path().to_owned();
    let reports = tokio::task::spawn_blocking(move || -> Result<Vec<(String, Value)>> {
        let base = |json: &str| -> Vec<String> {
            [
                "--target",
                &starttls,
                "--insecure",
                "--sources",
                "1",
                "--max-secs",
                "60",
                "--json",
                json,
            ]
            .map(str::to_owned)
            .to_vec()
        };
        let json = path.join("out.json").to_string_lossy().into_owned();
        let mut args = base(&json);
        args.extend(["register", "--users", "6"].map(str::to_owned));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::kith_bench(&path, &args, Duration::from_secs(90))?;
        let mut reports = Vec::new();
        for auth in ["classic", "sasl2", "fast"] {
            let _ = std::fs::remove_file(&json);
            let mut args = base(&json);
            args.extend(
                [
                    "--auth",
                    auth,
                    "login",
                    "--users",
                    "6",
                    "--concurrency",
                    "3",
                ]
                .map(str::to_owned),
            );
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            common::kith_bench(&path, &args, Duration::from_secs(90))?;
            reports.push((
                auth.to_owned(),
                serde_json::from_slice(&std::fs::read(&json)?)?,
            ));
        }
        Ok(reports)
    })
    .await??;
    for (auth, report) in &reports {
        let results = &report["results"];
        assert_eq!(results["up"], 6, "{auth}: {report}");
        assert_eq!(report["auth"], auth.as_str(), "{auth}: {report}");
        let jid = results["example_jid"].as_str().unwrap_or_default();
        // Classic binds `bench<N>`; Bind 2 the tag and an id of the client's own.
        let resource = jid.split_once('/').map(|(_, r)| r).unwrap_or_default();
        match auth.as_str() {
            "classic" => assert!(
                resource.starts_with("bench") && !resource.contains('/'),
                "{jid}"
            ),
            _ => assert!(resource.starts_with("bench/"), "{auth}: {jid}"),
        }
    }
    Ok(())
}
