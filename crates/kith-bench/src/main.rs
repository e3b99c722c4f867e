//! `kith-bench`: an XMPP load generator that measures kith, ejabberd and Prosody the
//! same way. See BENCHMARKS.md at the repository root for the method.
//!
//! Every scenario is bounded (counts and durations, plus `--max-secs` over the
//! whole run), targets only loopback unless `--allow-remote`, and counts and prints
//! errors, disconnects and lost messages instead of hiding them.

mod client;
mod group;
mod report;
mod scenarios;
mod scram;
mod sys;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

use crate::client::{Auth, Mech, Target};

/// mimalloc: the load generator's CPU bounds the highest steps it can offer
/// (BENCHMARKS.md, session 36).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "kith-bench",
    version,
    about = "XMPP load generator: kith vs ejabberd vs Prosody"
)]
pub struct Cli {
    /// Server c2s address (STARTTLS port).
    #[arg(long, global = true, default_value = "127.0.0.1:5222")]
    target: SocketAddr,
    /// Another node of the same service (repeatable): user N connects to the
    /// (N mod nodes)-th of --target and these, so a cluster's nodes share the
    /// users and 1:1 messages cross between them.
    #[arg(long = "also-target", global = true)]
    also_targets: Vec<SocketAddr>,
    /// XMPP domain; accounts are PREFIX{N}@DOMAIN.
    #[arg(long, global = true, default_value = "localhost")]
    domain: String,
    /// Password of every bench account.
    #[arg(long, global = true, default_value = "bench-pass")]
    password: String,
    /// Account name prefix.
    #[arg(long, global = true, default_value = "user")]
    prefix: String,
    /// CA certificate (PEM) to trust, e.g. kith's DATA_DIR/tls/ca.pem.
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Accept any server certificate (the anchors' self-signed ones).
    #[arg(long, global = true)]
    insecure: bool,
    /// Skip STARTTLS (only for servers that allow plaintext c2s).
    #[arg(long, global = true)]
    no_tls: bool,
    /// Connect over WebSocket (RFC 7395) to this URL instead of TCP to --target,
    /// e.g. ws://127.0.0.1:5280/xmpp-websocket (wss://… for TLS, trusting --ca).
    #[arg(long, global = true)]
    websocket: Option<String>,
    /// SASL mechanism.
    #[arg(long, global = true, value_enum, default_value = "auto")]
    mech: Mech,
    /// How clients sign in: RFC 6120 (`classic`), XEP-0388 SASL2 with Bind 2,
    /// or XEP-0484 FAST tokens (the login scenario).
    #[arg(long, global = true, value_enum, default_value = "classic")]
    auth: Auth,
    /// Number of source addresses 127.0.0.1..=127.0.0.N used round-robin, to go past
    /// one address's ephemeral ports (loopback targets only).
    #[arg(long, global = true, default_value_t = 4)]
    sources: u8,
    /// Server process to measure (repeatable; RSS and CPU are summed).
    #[arg(long = "server-pid", global = true)]
    server_pids: Vec<u32>,
    /// Measure every process with this exact command name (repeatable), e.g. beam.smp.
    #[arg(long = "server-name", global = true)]
    server_names: Vec<String>,
    /// Label for the output (kith, ejabberd, prosody…).
    #[arg(long, global = true, default_value = "server")]
    label: String,
    /// Also write the results as JSON here.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
    /// Allow a non-loopback target.
    #[arg(long, global = true)]
    allow_remote: bool,
    /// Per-login time-out, seconds.
    #[arg(long, global = true, default_value_t = 60)]
    timeout_secs: u64,
    /// Hard limit on the whole scenario, seconds.
    #[arg(long, global = true, default_value_t = 900)]
    max_secs: u64,
    /// Cache of SCRAM salted passwords (client-side PBKDF2) across runs.
    #[arg(long, global = true)]
    scram_cache: Option<PathBuf>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Scenario {
    /// Provision accounts PREFIX{first}..PREFIX{first+users-1} by XEP-0077 in-band registration.
    Register {
        #[arg(long, default_value_t = 1000)]
        users: usize,
        #[arg(long, default_value_t = 1)]
        first: usize,
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
    /// Login storm: sessions/s until N sessions are up (TLS+SASL+bind+roster+presence).
    Login {
        #[arg(long, default_value_t = 2000)]
        users: usize,
        #[arg(long, default_value_t = 1)]
        first: usize,
        /// Logins in flight at once.
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
    },
    /// N sessions held open; server RSS per session at each checkpoint.
    Idle {
        /// Session counts at which RSS is sampled; the last is the total.
        #[arg(long, value_delimiter = ',', default_value = "1000,5000,10000,19000")]
        checkpoints: Vec<usize>,
        #[arg(long, default_value_t = 1)]
        first: usize,
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
        /// Seconds to wait at a checkpoint before sampling RSS.
        #[arg(long, default_value_t = 3)]
        settle_secs: u64,
        /// Seconds to hold all sessions at the end (disconnects are counted).
        #[arg(long, default_value_t = 10)]
        hold_secs: u64,
        /// Sessions logged in and closed before the baseline RSS is read: the
        /// code a server pages in and what it makes once at its first logins
        /// are not charged to the sessions counted (0: a cold baseline).
        #[arg(long, default_value_t = 20)]
        warmup: usize,
    },
    /// M users send 1:1 messages to random online peers at stepped aggregate rates.
    Chat {
        #[arg(long, default_value_t = 200)]
        users: usize,
        #[arg(long, default_value_t = 1)]
        first: usize,
        /// Aggregate offered rates, messages/s, one step each. One
        /// load-generator core offers 68,000 with TLS at about 77 % of it on a
        /// 2-core VM (its CPU is in the table); stepping stops after two
        /// failed steps.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "250,500,1000,2000,4000,6000,8000,10000,15000,20000,28000,36000,44000,52000,60000,68000,76000,84000"
        )]
        rates: Vec<u32>,
        #[arg(long, default_value_t = 10)]
        step_secs: u64,
        /// Pause after each step for late messages before judging it.
        #[arg(long, default_value_t = 3)]
        drain_secs: u64,
        /// A step is held when p99 is under this and nothing is lost.
        #[arg(long, default_value_t = 100)]
        p99_ms: u64,
        /// Bytes of body padding per message.
        #[arg(long, default_value_t = 64)]
        body_bytes: usize,
        /// Run the remaining steps after a failed one (default: stop after 2 failed steps).
        #[arg(long)]
        keep_going: bool,
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
    },
    /// K messages to an offline user, then the time from its login to all delivered.
    Offline {
        #[arg(long, default_value_t = 5000)]
        messages: usize,
        /// Sender is PREFIX{first}, receiver PREFIX{first+1}.
        #[arg(long, default_value_t = 1)]
        first: usize,
        /// Seconds to wait for delivery before counting the rest lost.
        #[arg(long, default_value_t = 60)]
        wait_secs: u64,
        #[arg(long, default_value_t = 64)]
        body_bytes: usize,
    },
    /// XEP-0198: senders count messages acked per second by the server.
    Durable {
        /// Sender/receiver pairs (PREFIX{first+2i} → PREFIX{first+2i+1}).
        #[arg(long, default_value_t = 10)]
        pairs: usize,
        #[arg(long, default_value_t = 1)]
        first: usize,
        #[arg(long, default_value_t = 10)]
        secs: u64,
        /// Unacknowledged messages allowed in flight per sender.
        #[arg(long, default_value_t = 500)]
        window: u64,
        /// Send `<r/>` after this many messages.
        #[arg(long, default_value_t = 50)]
        ack_every: u64,
        #[arg(long, default_value_t = 64)]
        body_bytes: usize,
    },
    /// Group fan-out (XEP-0045 only): G members, N of them online in the room, S
    /// senders at stepped aggregate rates; every online member measures latency.
    Group {
        /// Members of the group (owner PREFIX{first} and PREFIX{first+1}..).
        #[arg(long, default_value_t = 200)]
        members: usize,
        /// Members logged in and joined (default: all of them).
        #[arg(long)]
        online: Option<usize>,
        /// Online members that send (the first S).
        #[arg(long, default_value_t = 10)]
        senders: usize,
        #[arg(long, default_value_t = 1)]
        first: usize,
        /// Aggregate offered group messages/s, one step each.
        #[arg(long, value_delimiter = ',', default_value = "10,20,50,100")]
        rates: Vec<u32>,
        #[arg(long, default_value_t = 10)]
        step_secs: u64,
        /// Pause after each step for late messages before judging it.
        #[arg(long, default_value_t = 3)]
        drain_secs: u64,
        /// A step is held when p99 is under this and nothing is lost.
        #[arg(long, default_value_t = 100)]
        p99_ms: u64,
        #[arg(long, default_value_t = 64)]
        body_bytes: usize,
        /// Run the remaining steps after a failed one (default: stop after 2 failed steps).
        #[arg(long)]
        keep_going: bool,
        /// Logins and joins in flight at once.
        #[arg(long, default_value_t = 50)]
        concurrency: usize,
        /// Affiliation changes (one muc#admin IQ each) in flight at once.
        #[arg(long, default_value_t = 50)]
        batch: usize,
        /// The MUC service (default conference.DOMAIN).
        #[arg(long)]
        muc_domain: Option<String>,
    },
}

pub struct Ctx {
    pub cli: Cli,
    pub target: Target,
    pub procs: sys::Procs,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let addr = match &cli.websocket {
        Some(url) => client::websocket_addr(url)?,
        None => cli.target,
    };
    for addr in std::iter::once(&addr).chain(&cli.also_targets) {
        if !addr.ip().is_loopback() && !cli.allow_remote {
            bail!("refusing non-loopback target {addr} without --allow-remote");
        }
    }
    if cli.websocket.is_some() && !cli.also_targets.is_empty() {
        bail!("--also-target takes c2s addresses: not with --websocket");
    }
    // A WebSocket URL says whether TLS is on: `wss://` needs it, `ws://` has none.
    let websocket_tls = cli.websocket.as_ref().map(|url| url.starts_with("wss://"));
    if websocket_tls == Some(true) && cli.no_tls {
        bail!("a wss:// URL needs TLS: drop --no-tls, or use ws://");
    }
    let tls = if cli.no_tls || websocket_tls == Some(false) {
        None
    } else {
        Some(client::tls_config(cli.ca.as_deref(), cli.insecure)?)
    };
    let sources = if addr.ip().is_loopback() && addr.is_ipv4() && cli.sources > 0 {
        (1..=cli.sources)
            .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
            .collect()
    } else {
        Vec::new()
    };
    let target = Target {
        addr,
        also: cli.also_targets.clone(),
        domain: cli.domain.clone(),
        tls,
        mech: cli.mech,
        auth: cli.auth,
        password: cli.password.clone(),
        sources,
        timeout: Duration::from_secs(cli.timeout_secs),
        websocket: cli.websocket.clone(),
    };
    let procs = sys::Procs::resolve(&cli.server_pids, &cli.server_names)?;
    let nofile = sys::raise_nofile();
    if let Some(path) = &cli.scram_cache {
        let n = scram::load_cache(path)?;
        eprintln!("scram cache: {n} salted passwords loaded");
    }
    eprintln!(
        "kith-bench: {} → {} ({}), open-files limit {nofile}, {} CPU(s) for the load generator, server pids {:?}",
        cli.label,
        cli.websocket
            .clone()
            .unwrap_or_else(|| cli.target.to_string()),
        match (&target.tls, &target.websocket) {
            (Some(_), None) => "STARTTLS",
            (Some(_), Some(_)) => "WebSocket over TLS",
            (None, None) => "no TLS",
            (None, Some(_)) => "WebSocket, no TLS",
        },
        sys::cpus_allowed(),
        procs.pids
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let max = Duration::from_secs(cli.max_secs);
    let ctx = Ctx { cli, target, procs };
    let result = runtime.block_on(async {
        tokio::time::timeout(max, scenarios::run(&ctx))
            .await
            .unwrap_or_else(|_| bail!("scenario exceeded --max-secs {}", max.as_secs()))
    });
    if let Some(path) = &ctx.cli.scram_cache
        && let Err(e) = scram::save_cache(path)
    {
        eprintln!("scram cache not saved: {e:#}");
    }
    let report = result?;
    report.print();
    if let Some(path) = &ctx.cli.json {
        std::fs::write(path, serde_json::to_string_pretty(&report.json)?)?;
        eprintln!("JSON written to {}", path.display());
    }
    // Dropping thousands of sessions is quicker than closing each politely.
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}
