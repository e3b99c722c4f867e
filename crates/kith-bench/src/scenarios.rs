//! The scenarios. Each returns a [`Report`]; all are bounded in count and time.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow, bail};
use hdrhistogram::Histogram;
use kith_proto::Element;
use kith_proto::xml::Node;
use serde_json::json;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;

use crate::client::{self, Auth, LoginSteps, NS_SM, Registered, Session, Writer};
use crate::report::{Errors, Report, ms, table};
use crate::{Ctx, Scenario};

/// Microseconds since a process-wide epoch: the send time carried in message bodies.
pub(crate) fn now_us() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

pub(crate) fn new_hist() -> Histogram<u64> {
    // 1 µs to 10 min, 3 significant digits; these bounds are valid.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("constant histogram bounds are valid")
}

pub(crate) fn pad(n: usize) -> String {
    "x".repeat(n)
}

/// Samples the server's and our own CPU time over an interval.
pub(crate) struct CpuMeter {
    server: Option<crate::sys::CpuSample>,
    client: u64,
    wall: Instant,
}

impl CpuMeter {
    pub(crate) fn start(ctx: &Ctx) -> Self {
        CpuMeter {
            server: ctx.procs.cpu_sample(),
            client: crate::sys::self_cpu_us(),
            wall: Instant::now(),
        }
    }
    /// (server CPU µs, client CPU µs, wall µs).
    pub(crate) fn stop(&self, ctx: &Ctx) -> (Option<u64>, u64, u64) {
        let server = match (&self.server, ctx.procs.cpu_sample()) {
            (Some(before), Some(now)) => Some(now.since(before)),
            _ => None,
        };
        (
            server,
            crate::sys::self_cpu_us().saturating_sub(self.client),
            self.wall.elapsed().as_micros() as u64,
        )
    }
}

pub(crate) fn saturation_note(client_cpu: u64, wall: u64) -> Option<String> {
    let share = client_cpu as f64 / wall.max(1) as f64;
    (share > 0.9 * crate::sys::cpus_allowed() as f64).then(|| {
        format!(
            "WARNING: the load generator used {:.0}% of its CPU: the result may be limited by the client, not the server",
            share * 100.0
        )
    })
}

pub(crate) fn header(ctx: &Ctx, scenario: &str) -> serde_json::Value {
    json!({
        "tool": "kith-bench",
        "version": env!("CARGO_PKG_VERSION"),
        "label": ctx.cli.label,
        "scenario": scenario,
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "target": ctx.target.websocket.clone().unwrap_or_else(|| ctx.cli.target.to_string()),
        "transport": if ctx.target.websocket.is_some() { "websocket" } else { "tcp" },
        "domain": ctx.cli.domain,
        "tls": ctx.target.tls.is_some(),
        "mech": ctx.cli.mech,
        "auth": ctx.target.auth,
        "server_pids": ctx.procs.pids,
        "load_generator_cpus": crate::sys::cpus_allowed(),
    })
}

pub(crate) fn user(ctx: &Ctx, n: usize) -> String {
    format!("{}{n}", ctx.cli.prefix)
}

pub async fn run(ctx: &Ctx) -> Result<Report> {
    match ctx.cli.scenario.clone() {
        Scenario::Register {
            users,
            first,
            concurrency,
        } => register(ctx, users, first, concurrency).await,
        Scenario::Login {
            users,
            first,
            concurrency,
        } => login(ctx, users, first, concurrency).await,
        Scenario::Idle {
            checkpoints,
            first,
            concurrency,
            settle_secs,
            hold_secs,
            warmup,
        } => {
            let opts = IdleOpts {
                first,
                concurrency,
                settle_secs,
                hold_secs,
                warmup,
            };
            idle(ctx, checkpoints, opts).await
        }
        Scenario::Chat {
            users,
            first,
            rates,
            step_secs,
            drain_secs,
            p99_ms,
            body_bytes,
            keep_going,
            concurrency,
        } => {
            let opts = ChatOpts {
                users,
                first,
                rates,
                step_secs,
                drain_secs,
                p99_ms,
                body_bytes,
                keep_going,
                concurrency,
            };
            chat(ctx, opts).await
        }
        Scenario::Offline {
            messages,
            first,
            wait_secs,
            body_bytes,
        } => offline(ctx, messages, first, wait_secs, body_bytes).await,
        Scenario::Durable {
            pairs,
            first,
            secs,
            window,
            ack_every,
            body_bytes,
        } => durable(ctx, pairs, first, secs, window, ack_every, body_bytes).await,
        Scenario::Group {
            members,
            online,
            senders,
            first,
            rates,
            step_secs,
            drain_secs,
            p99_ms,
            body_bytes,
            keep_going,
            concurrency,
            batch,
            muc_domain,
        } => {
            let opts = crate::group::GroupOpts {
                members,
                online: online.unwrap_or(members),
                senders,
                first,
                rates,
                step_secs,
                drain_secs,
                p99_ms,
                body_bytes,
                keep_going,
                concurrency,
                batch,
                muc_domain: muc_domain.unwrap_or_else(|| format!("conference.{}", ctx.cli.domain)),
            };
            crate::group::group(ctx, opts).await
        }
    }
}

/// Runs `f(i)` for `i` in `range` with at most `concurrency` in flight; returns the
/// successes in completion order.
pub(crate) async fn bounded<T, F, Fut>(
    range: std::ops::Range<usize>,
    concurrency: usize,
    errors: &Errors,
    f: F,
) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<T>> + Send + 'static,
{
    let mut set = JoinSet::new();
    let mut out = Vec::with_capacity(range.len());
    let handle = |r: Result<Result<T>, tokio::task::JoinError>, out: &mut Vec<T>| match r {
        Ok(Ok(v)) => out.push(v),
        Ok(Err(e)) => errors.add(&e),
        Err(e) => errors.add(&anyhow!("task failed: {e}")),
    };
    for i in range {
        while set.len() >= concurrency.max(1) {
            if let Some(r) = set.join_next().await {
                handle(r, &mut out);
            }
        }
        set.spawn(f(i));
    }
    while let Some(r) = set.join_next().await {
        handle(r, &mut out);
    }
    out
}

// ---------------------------------------------------------------------------------
// register

async fn register(ctx: &Ctx, users: usize, first: usize, concurrency: usize) -> Result<Report> {
    let errors = Errors::default();
    let created = Arc::new(AtomicU64::new(0));
    let existed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    bounded(first..first + users, concurrency, &errors, |i| {
        let target = ctx.target.clone();
        let name = user(ctx, i);
        let (created, existed) = (created.clone(), existed.clone());
        async move {
            match client::register(&target, &name, i).await? {
                Registered::Created => created.fetch_add(1, Ordering::Relaxed),
                Registered::Existed => existed.fetch_add(1, Ordering::Relaxed),
            };
            Ok(())
        }
    })
    .await;
    let secs = start.elapsed().as_secs_f64();
    let (c, e) = (
        created.load(Ordering::Relaxed),
        existed.load(Ordering::Relaxed),
    );
    let mut lines = vec![format!(
        "register [{}]: {c} created, {e} already existed, {} failed, in {secs:.1} s ({:.0}/s)",
        ctx.cli.label,
        errors.total(),
        (c + e) as f64 / secs.max(1e-9)
    )];
    lines.extend(errors.lines());
    let mut json = header(ctx, "register");
    json["results"] = json!({"created": c, "existed": e, "failed": errors.total(), "secs": secs});
    json["errors"] = json!(errors.snapshot());
    Ok(Report { lines, json })
}

// ---------------------------------------------------------------------------------
// login

async fn login(ctx: &Ctx, users: usize, first: usize, concurrency: usize) -> Result<Report> {
    let errors = Errors::default();
    let hist = Arc::new(std::sync::Mutex::new(new_hist()));
    let steps = LoginSteps {
        presence: true,
        roster: true,
    };
    // FAST: every user's token first, from a SASL2 login not measured.
    let tokens: Arc<HashMap<usize, String>> = Arc::new(if ctx.target.auth == Auth::Fast {
        bounded(first..first + users, concurrency, &errors, |i| {
            let target = ctx.target.clone();
            let name = user(ctx, i);
            async move { Ok((i, client::fast_token(&target, &name, i).await?)) }
        })
        .await
        .into_iter()
        .collect()
    } else {
        HashMap::new()
    });
    let cpu = CpuMeter::start(ctx);
    let sessions = bounded(first..first + users, concurrency, &errors, |i| {
        let target = ctx.target.clone();
        let name = user(ctx, i);
        let hist = hist.clone();
        let tokens = tokens.clone();
        async move {
            let t = Instant::now();
            let token = tokens.get(&i).map(String::as_str);
            let s = client::login_with(&target, &name, i, steps, token).await?;
            if let Ok(mut h) = hist.lock() {
                let _ = h.record(t.elapsed().as_micros() as u64);
            }
            Ok(s)
        }
    })
    .await;
    let (server_cpu, client_cpu, wall) = cpu.stop(ctx);
    let up = sessions.len();
    let tls = sessions.first().and_then(|s| s.tls.clone());
    let example_jid = sessions.first().map(|s| s.jid.clone());
    let rate = up as f64 / (wall as f64 / 1e6);
    let h = hist
        .lock()
        .map(|h| h.clone())
        .unwrap_or_else(|_| new_hist());
    let cpu_per_login = server_cpu.map(|c| c as f64 / up.max(1) as f64);
    let mut lines = vec![format!(
        "login [{}]: {up}/{users} sessions up in {:.2} s, {concurrency} in flight, TLS {}, sign-in {:?}",
        ctx.cli.label,
        wall as f64 / 1e6,
        tls.as_deref().unwrap_or("off"),
        ctx.target.auth
    )];
    lines.extend(table(
        &[
            "sessions/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "server CPU µs/login",
            "failed",
        ],
        &[vec![
            format!("{rate:.0}"),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max()),
            cpu_per_login
                .map(|c| format!("{c:.0}"))
                .unwrap_or("-".into()),
            errors.total().to_string(),
        ]],
    ));
    lines.extend(saturation_note(client_cpu, wall));
    lines.extend(errors.lines());
    // Close the sessions politely.
    for mut s in sessions {
        let _ = s.conn.send("</stream:stream>").await;
    }
    let mut json = header(ctx, "login");
    json["results"] = json!({
        "users": users, "up": up, "concurrency": concurrency, "secs": wall as f64 / 1e6,
        "sessions_per_s": rate, "p50_ms": h.value_at_quantile(0.5) as f64 / 1e3,
        "p99_ms": h.value_at_quantile(0.99) as f64 / 1e3, "max_ms": h.max() as f64 / 1e3,
        "server_cpu_us": server_cpu, "server_cpu_us_per_login": cpu_per_login,
        "client_cpu_us": client_cpu, "tls": tls, "example_jid": example_jid,
    });
    json["errors"] = json!(errors.snapshot());
    Ok(Report { lines, json })
}

// ---------------------------------------------------------------------------------
// idle

/// Keeps a session alive: answers pings, counts an unexpected end as a disconnect.
async fn idle_loop(session: Session, mut stop: watch::Receiver<bool>, disconnects: Arc<AtomicU64>) {
    let (mut rd, mut wr) = session.conn.into_split();
    loop {
        tokio::select! {
            next = rd.next() => match next {
                Ok(Some(el)) => {
                    if let Some(reply) = client::auto_reply(&el)
                        && client::write(&mut wr, &reply).await.is_err()
                    {
                        disconnects.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                _ => {
                    if !*stop.borrow() {
                        disconnects.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
            },
            _ = stop.changed() => {
                let _ = client::write(&mut wr, "</stream:stream>").await;
                return;
            }
        }
    }
}

struct IdleOpts {
    first: usize,
    concurrency: usize,
    settle_secs: u64,
    hold_secs: u64,
    warmup: usize,
}

async fn idle(ctx: &Ctx, mut checkpoints: Vec<usize>, opts: IdleOpts) -> Result<Report> {
    let IdleOpts {
        first,
        concurrency,
        settle_secs,
        hold_secs,
        warmup,
    } = opts;
    checkpoints.sort_unstable();
    checkpoints.dedup();
    let total = checkpoints.last().copied().unwrap_or(0);
    if total > 100_000 {
        bail!("idle: at most 100000 sessions");
    }
    if ctx.procs.is_empty() {
        bail!("idle needs --server-pid or --server-name to read the server's RSS");
    }
    let errors = Errors::default();
    let (stop_tx, stop_rx) = watch::channel(false);
    let disconnects = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    let steps = LoginSteps {
        presence: true,
        roster: true,
    };
    let cold = ctx.procs.rss_bytes().unwrap_or(0);
    let cold_file = ctx.procs.rss_file_bytes().unwrap_or(0);
    // A server's first logins page in its code (file-backed pages of RSS) and
    // fill what it makes once; those sessions end before the baseline is read,
    // so that what each checkpoint counts is what sessions hold.
    if warmup > 0 {
        let warm = bounded(first..first + warmup, concurrency, &errors, |i| {
            let target = ctx.target.clone();
            let name = user(ctx, i);
            async move { client::login(&target, &name, i, steps).await }
        })
        .await;
        for session in warm {
            let (_, mut wr) = session.conn.into_split();
            let _ = client::write(&mut wr, "</stream:stream>").await;
        }
        tokio::time::sleep(Duration::from_secs(settle_secs)).await;
    }
    let baseline = ctx.procs.rss_bytes().unwrap_or(0);
    let baseline_file = ctx.procs.rss_file_bytes().unwrap_or(0);
    let mut rows = Vec::new();
    let mut points = Vec::new();
    let mut tls = None;
    let mut up = 0usize;
    let mut next_index = first;
    let mut prev = (0usize, baseline);
    let start = Instant::now();
    for &cp in &checkpoints {
        let want = cp.saturating_sub(up);
        let sessions = bounded(next_index..next_index + want, concurrency, &errors, |i| {
            let target = ctx.target.clone();
            let name = user(ctx, i);
            async move { client::login(&target, &name, i, steps).await }
        })
        .await;
        next_index += want;
        up += sessions.len();
        for s in sessions {
            if tls.is_none() {
                tls = s.tls.clone();
            }
            tasks.spawn(idle_loop(s, stop_rx.clone(), disconnects.clone()));
        }
        tokio::time::sleep(Duration::from_secs(settle_secs)).await;
        let rss = ctx.procs.rss_bytes().unwrap_or(0);
        let alive = up as u64 - disconnects.load(Ordering::Relaxed);
        let per = (rss.saturating_sub(baseline)) as f64 / alive.max(1) as f64;
        let marginal = (rss as f64 - prev.1 as f64) / (alive as f64 - prev.0 as f64).max(1.0);
        rows.push(vec![
            alive.to_string(),
            format!("{:.1}", rss as f64 / 1048576.0),
            format!("{:.1}", per / 1024.0),
            format!("{:.1}", marginal / 1024.0),
        ]);
        let file = ctx.procs.rss_file_bytes().unwrap_or(0);
        points.push(json!({"sessions": alive, "rss_bytes": rss, "rss_file_bytes": file, "bytes_per_session": per, "marginal_bytes_per_session": marginal}));
        prev = (alive as usize, rss);
    }
    let login_secs = start.elapsed().as_secs_f64();
    // What holding them costs the server's CPU: sessions that do nothing
    // should cost nothing (timers, polling and keep-alives show up here).
    let cpu_before = ctx.procs.cpu_sample();
    let held_since = Instant::now();
    tokio::time::sleep(Duration::from_secs(hold_secs)).await;
    let held_cpu_ms_per_s = match (cpu_before, ctx.procs.cpu_sample()) {
        (Some(before), Some(after)) => {
            Some(after.since(&before) as f64 / 1e3 / held_since.elapsed().as_secs_f64())
        }
        _ => None,
    };
    let lost = disconnects.load(Ordering::Relaxed);
    let _ = stop_tx.send(true);
    let closing = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(30), closing).await;
    let mib = |bytes: u64| bytes as f64 / 1048576.0;
    let end_file = points
        .last()
        .and_then(|p| p["rss_file_bytes"].as_u64())
        .unwrap_or(0);
    let mut lines = vec![
        format!(
            "idle [{}]: {up}/{total} sessions up (logins took {login_secs:.1} s), TLS {}, \
             baseline server RSS {:.1} MiB after {warmup} warm-up logins ({:.1} MiB cold)",
            ctx.cli.label,
            tls.as_deref().unwrap_or("off"),
            mib(baseline),
            mib(cold)
        ),
        format!(
            "of which file-backed (code): {:.1} MiB cold, {:.1} at the baseline, {:.1} at the end",
            mib(cold_file),
            mib(baseline_file),
            mib(end_file)
        ),
    ];
    lines.extend(table(
        &[
            "sessions",
            "server RSS MiB",
            "KiB/session",
            "marginal KiB/session",
        ],
        &rows,
    ));
    lines.push(format!(
        "disconnects while held ({hold_secs} s hold): {lost}"
    ));
    if let Some(cpu) = held_cpu_ms_per_s {
        lines.push(format!(
            "server CPU while held: {cpu:.2} ms/s ({:.3} ms/s per 1,000 sessions; \
             /proc counts 10 ms ticks: ±{:.2} ms/s over the hold)",
            cpu * 1000.0 / up.max(1) as f64,
            10.0 / hold_secs.max(1) as f64
        ));
    }
    lines.extend(errors.lines());
    let mut json = header(ctx, "idle");
    json["results"] = json!({
        "target_sessions": total, "up": up, "baseline_rss_bytes": baseline,
        "cold_rss_bytes": cold, "warmup_sessions": warmup,
        "baseline_rss_file_bytes": baseline_file, "cold_rss_file_bytes": cold_file,
        "checkpoints": points, "disconnects": lost, "hold_secs": hold_secs, "tls": tls,
        "held_cpu_ms_per_s": held_cpu_ms_per_s,
    });
    json["errors"] = json!(errors.snapshot());
    Ok(Report { lines, json })
}

// ---------------------------------------------------------------------------------
// chat

struct ChatOpts {
    users: usize,
    first: usize,
    rates: Vec<u32>,
    step_secs: u64,
    drain_secs: u64,
    p99_ms: u64,
    body_bytes: usize,
    keep_going: bool,
    concurrency: usize,
}

struct ChatShared {
    run: u32,
    sent: Vec<AtomicU64>,
    received: Vec<AtomicU64>,
    hist: Vec<std::sync::Mutex<Histogram<u64>>>,
    links: client::LinkCounters,
}

/// The send time and step carried in a body: `kb RUN STEP T_US padding`.
fn parse_body(body: &str, tag: &str) -> Option<(u32, usize, u64)> {
    let mut it = body.split(' ');
    if it.next()? != tag {
        return None;
    }
    let run = it.next()?.parse().ok()?;
    let step = it.next()?.parse().ok()?;
    let t = it.next()?.parse().ok()?;
    Some((run, step, t))
}

/// A message's body, borrowed when it is one text node (as the load's are).
pub(crate) fn message_body(el: &Element) -> Option<Cow<'_, str>> {
    let body = el.get_child("body", client::NS_CLIENT)?;
    Some(match body.children.as_slice() {
        [Node::Text(text)] => Cow::Borrowed(text),
        _ => Cow::Owned(body.text_content()),
    })
}

async fn chat_reader(rd: client::Reader, replies: mpsc::Sender<String>, shared: Arc<ChatShared>) {
    let on_message = |el: &Element| {
        let Some(body) = message_body(el) else {
            return;
        };
        if let Some((run, step, t)) = parse_body(&body, "kb")
            && run == shared.run
            && step < shared.received.len()
        {
            let lat = now_us().saturating_sub(t).max(1);
            shared.received[step].fetch_add(1, Ordering::Relaxed);
            if let Ok(mut h) = shared.hist[step].lock() {
                let _ = h.record(lat);
            }
        }
    };
    client::read_loop(rd, replies, &shared.links, on_message).await;
}

/// A chat user's write side: its share of the step's rate, each message to a
/// random other user; answers pings between.
#[allow(clippy::too_many_arguments)]
async fn chat_sender(
    mut wr: Writer,
    me: usize,
    peers: Arc<Vec<String>>,
    domain: String,
    mut control: watch::Receiver<Option<(usize, u32)>>,
    mut replies: mpsc::Receiver<String>,
    shared: Arc<ChatShared>,
    padding: Arc<String>,
) {
    let users = peers.len();
    let mut seq: u64 = 0;
    let make = |step: usize, xml: &mut String| {
        let mut peer = rand::random_range(0..users);
        if peer == me && users > 1 {
            peer = (peer + 1) % users;
        }
        seq += 1;
        write!(
            xml,
            "<message to='{}@{domain}' type='chat' id='m{seq}'><body>kb {} {step} {} {padding}</body></message>",
            peers[peer],
            shared.run,
            now_us()
        )
        .is_ok()
    };
    let sent = |step: usize| {
        shared.sent[step].fetch_add(1, Ordering::Relaxed);
    };
    if client::paced(&mut wr, true, users, &mut control, &mut replies, make, sent).await
        == client::Paced::Done
    {
        let _ = client::write(&mut wr, "</stream:stream>").await;
    }
}

async fn chat(ctx: &Ctx, o: ChatOpts) -> Result<Report> {
    if o.users < 2 || o.users > 50_000 || o.rates.is_empty() || o.rates.len() > 100 {
        bail!("chat: 2..=50000 users and 1..=100 rates");
    }
    let errors = Errors::default();
    let steps = LoginSteps {
        presence: true,
        roster: true,
    };
    let login_start = Instant::now();
    let mut sessions = bounded(o.first..o.first + o.users, o.concurrency, &errors, |i| {
        let target = ctx.target.clone();
        let name = user(ctx, i);
        async move {
            client::login(&target, &name, i, steps)
                .await
                .map(|s| (i, s))
        }
    })
    .await;
    if sessions.len() < 2 {
        bail!(
            "chat: fewer than 2 users logged in; errors: {:?}",
            errors.snapshot()
        );
    }
    sessions.sort_by_key(|(i, _)| *i);
    let login_secs = login_start.elapsed().as_secs_f64();
    let tls = sessions.first().and_then(|(_, s)| s.tls.clone());
    // Peers are the users that are actually online.
    let peers: Arc<Vec<String>> = Arc::new(sessions.iter().map(|(i, _)| user(ctx, *i)).collect());
    let shared = Arc::new(ChatShared {
        run: rand::random(),
        sent: o.rates.iter().map(|_| AtomicU64::new(0)).collect(),
        received: o.rates.iter().map(|_| AtomicU64::new(0)).collect(),
        hist: o
            .rates
            .iter()
            .map(|_| std::sync::Mutex::new(new_hist()))
            .collect(),
        links: client::LinkCounters::default(),
    });
    let (control_tx, control_rx) = watch::channel::<Option<(usize, u32)>>(None);
    let padding = Arc::new(pad(o.body_bytes));
    let mut tasks = JoinSet::new();
    for (me, (_, s)) in sessions.into_iter().enumerate() {
        let (rd, wr) = s.conn.into_split();
        let (reply_tx, reply_rx) = mpsc::channel(8);
        tasks.spawn(chat_reader(rd, reply_tx, shared.clone()));
        tasks.spawn(chat_sender(
            wr,
            me,
            peers.clone(),
            ctx.cli.domain.clone(),
            control_rx.clone(),
            reply_rx,
            shared.clone(),
            padding.clone(),
        ));
    }
    // Let presence and roster traffic settle before the first step.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut rows = Vec::new();
    let mut steps_json = Vec::new();
    let mut held: Option<u32> = None;
    let mut failures = 0;
    let mut warnings = Vec::new();
    // Messages received per step when it was judged, to tell late from lost.
    let mut judged: Vec<u64> = Vec::new();
    for (step, &rate) in o.rates.iter().enumerate() {
        let errors_before = shared.links.stanza_errors.load(Ordering::Relaxed);
        let disc_before = shared.links.disconnects.load(Ordering::Relaxed);
        let cpu = CpuMeter::start(ctx);
        let _ = control_tx.send(Some((step, rate)));
        tokio::time::sleep(Duration::from_secs(o.step_secs)).await;
        let _ = control_tx.send(None);
        let (_, client_send_cpu, send_wall) = cpu.stop(ctx);
        tokio::time::sleep(Duration::from_secs(o.drain_secs)).await;
        let (server_cpu, _, wall) = cpu.stop(ctx);
        let sent = shared.sent[step].load(Ordering::Relaxed);
        let received = shared.received[step].load(Ordering::Relaxed);
        let lost = sent.saturating_sub(received);
        let h = shared.hist[step]
            .lock()
            .map(|h| h.clone())
            .unwrap_or_else(|_| new_hist());
        let stanza_errors = shared.links.stanza_errors.load(Ordering::Relaxed) - errors_before;
        let disconnects = shared.links.disconnects.load(Ordering::Relaxed) - disc_before;
        let p99 = h.value_at_quantile(0.99);
        let ok = received > 0
            && lost == 0
            && stanza_errors == 0
            && disconnects == 0
            && p99 < o.p99_ms * 1000;
        if ok {
            held = Some(held.map_or(rate, |h: u32| h.max(rate)));
        }
        let secs = o.step_secs as f64;
        let cpu_per_msg = server_cpu.map(|c| c as f64 / received.max(1) as f64);
        let server_util = server_cpu.map(|c| c as f64 / wall as f64 * 100.0);
        if let Some(w) = saturation_note(client_send_cpu, send_wall) {
            warnings.push(format!("step {rate}/s: {w}"));
        }
        rows.push(vec![
            rate.to_string(),
            format!("{:.0}", sent as f64 / secs),
            format!("{:.0}", received as f64 / secs),
            ms(h.value_at_quantile(0.5)),
            ms(p99),
            ms(h.value_at_quantile(0.999)),
            ms(h.max()),
            lost.to_string(),
            (stanza_errors + disconnects).to_string(),
            server_util
                .map(|u| format!("{u:.0}%"))
                .unwrap_or("-".into()),
            cpu_per_msg.map(|c| format!("{c:.1}")).unwrap_or("-".into()),
            format!(
                "{:.0}%",
                client_send_cpu as f64 / send_wall.max(1) as f64 * 100.0
            ),
            if ok { "held" } else { "FAILED" }.into(),
        ]);
        steps_json.push(json!({
            "offered_per_s": rate, "sent": sent, "received": received, "lost": lost,
            "sent_per_s": sent as f64 / secs, "delivered_per_s": received as f64 / secs,
            "p50_ms": h.value_at_quantile(0.5) as f64 / 1e3, "p99_ms": p99 as f64 / 1e3,
            "p999_ms": h.value_at_quantile(0.999) as f64 / 1e3, "max_ms": h.max() as f64 / 1e3,
            "stanza_errors": stanza_errors, "disconnects": disconnects,
            "server_cpu_us": server_cpu, "server_cpu_percent": server_util,
            "server_cpu_us_per_msg": cpu_per_msg,
            "client_cpu_percent": client_send_cpu as f64 / send_wall.max(1) as f64 * 100.0,
            "held": ok,
        }));
        judged.push(received);
        if ok {
            failures = 0;
        } else {
            failures += 1;
            if !o.keep_going && failures >= 2 {
                break;
            }
        }
        if disconnects > 0
            && shared.links.disconnects.load(Ordering::Relaxed) as usize >= peers.len()
        {
            warnings.push("every session disconnected; stopping".into());
            break;
        }
    }
    // Anything that arrived after a step was judged was late, not lost.
    let mut late_total = 0;
    for (step, at_judgement) in judged.iter().enumerate() {
        let now = shared.received[step].load(Ordering::Relaxed);
        let late = now.saturating_sub(*at_judgement);
        let sent = shared.sent[step].load(Ordering::Relaxed);
        late_total += late;
        steps_json[step]["arrived_after_judgement"] = json!(late);
        steps_json[step]["never_arrived"] = json!(sent.saturating_sub(now));
        if late > 0 || sent > now {
            warnings.push(format!(
                "step {}/s: {late} arrived after the step was judged (late), {} never arrived by the end of the run (lost)",
                o.rates[step],
                sent.saturating_sub(now)
            ));
        }
    }
    shared.links.stopping.store(true, Ordering::Relaxed);
    drop(control_tx);
    let closing = async { while tasks.join_next().await.is_some() {} };
    let _ = tokio::time::timeout(Duration::from_secs(10), closing).await;
    tasks.abort_all();

    let mut lines = vec![format!(
        "chat [{}]: {} users online (logins {login_secs:.1} s), TLS {}, {} s steps + {} s drain, target p99 < {} ms",
        ctx.cli.label,
        peers.len(),
        tls.as_deref().unwrap_or("off"),
        o.step_secs,
        o.drain_secs,
        o.p99_ms
    )];
    lines.extend(table(
        &[
            "offered/s",
            "sent/s",
            "delivered/s",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "lost",
            "errors",
            "server CPU",
            "CPU µs/msg",
            "client CPU",
            "",
        ],
        &rows,
    ));
    let outcomes: Vec<(u32, bool)> = steps_json
        .iter()
        .zip(&o.rates)
        .map(|(step, &rate)| (rate, step["held"].as_bool().unwrap_or(false)))
        .collect();
    let throughout = held_throughout(&outcomes);
    lines.push(match held {
        Some(r) if throughout != Some(r) => format!(
            "highest rate held (p99 < {} ms, nothing lost): {r} msg/s, but a lower step failed: \
             every step held up to {}",
            o.p99_ms,
            throughout.map_or("none".to_owned(), |t| format!("{t} msg/s"))
        ),
        Some(r) => format!(
            "highest rate held (p99 < {} ms, nothing lost): {r} msg/s",
            o.p99_ms
        ),
        None => format!("no step held (p99 < {} ms, nothing lost)", o.p99_ms),
    });
    lines.push(format!(
        "messages that arrived after their step was judged: {late_total}"
    ));
    lines.extend(warnings.iter().cloned());
    lines.extend(errors.lines());
    let mut json = header(ctx, "chat");
    json["results"] = json!({
        "users": peers.len(), "steps": steps_json, "highest_rate_held": held,
        "highest_rate_held_throughout": throughout,
        "p99_target_ms": o.p99_ms, "step_secs": o.step_secs, "drain_secs": o.drain_secs,
        "body_bytes": o.body_bytes, "tls": tls, "warnings": warnings,
        "late_total": late_total,
    });
    json["errors"] = json!(errors.snapshot());
    Ok(Report { lines, json })
}

// ---------------------------------------------------------------------------------
// offline

/// Reads until `quiet` passes with nothing arriving (bounded by `max`).
async fn drain(conn: &mut client::Conn, quiet: Duration, max: Duration) -> usize {
    let deadline = Instant::now() + max;
    let mut n = 0;
    while Instant::now() < deadline {
        match tokio::time::timeout(quiet, conn.next_stanza()).await {
            Ok(Ok(el)) => {
                n += 1;
                if let Some(reply) = client::auto_reply(&el) {
                    let _ = conn.send(&reply).await;
                }
            }
            _ => break,
        }
    }
    n
}

/// Closes the stream and waits for the server to close its side (so that it
/// considers the user offline before anything else happens).
pub(crate) async fn close(mut conn: client::Conn) {
    let _ = conn
        .send("<presence type='unavailable'/></stream:stream>")
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while conn.next().await.is_ok() {}
    })
    .await;
}

async fn offline(
    ctx: &Ctx,
    messages: usize,
    first: usize,
    wait_secs: u64,
    body_bytes: usize,
) -> Result<Report> {
    if messages > 1_000_000 {
        bail!("offline: at most 1000000 messages");
    }
    let (sender_name, receiver_name) = (user(ctx, first), user(ctx, first + 1));
    let errors = Errors::default();
    let steps = LoginSteps {
        presence: true,
        roster: true,
    };
    // 1. Empty the receiver's offline queue from earlier runs.
    let mut rx = client::login(&ctx.target, &receiver_name, first + 1, steps).await?;
    let leftovers = drain(
        &mut rx.conn,
        Duration::from_secs(1),
        Duration::from_secs(30),
    )
    .await;
    close(rx.conn).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // 2. Send K messages to the offline receiver, then a ping as a barrier.
    let mut tx = client::login(&ctx.target, &sender_name, first, steps).await?;
    let run: u32 = rand::random();
    let padding = pad(body_bytes);
    let send_start = Instant::now();
    let mut batch = String::new();
    for i in 0..messages {
        batch.push_str(&format!(
            "<message to='{receiver_name}@{}' type='chat' id='o{i}'><body>ko {run} 0 {i} {padding}</body></message>",
            ctx.cli.domain
        ));
        if batch.len() > 16 * 1024 {
            tx.conn.send(&batch).await?;
            batch.clear();
        }
    }
    batch.push_str(&format!(
        "<iq type='get' id='barrier' to='{}'><ping xmlns='urn:xmpp:ping'/></iq>",
        ctx.cli.domain
    ));
    tx.conn.send(&batch).await?;
    let mut sender_errors = 0u64;
    tokio::time::timeout(Duration::from_secs(wait_secs), async {
        loop {
            let el = tx.conn.next_stanza().await?;
            if el.name == "iq" && el.get_attr("id") == Some("barrier") {
                return Ok::<_, anyhow::Error>(());
            }
            if el.name == "message" && el.get_attr("type") == Some("error") {
                sender_errors += 1;
                errors.add_kind(&format!("message error: {}", client::error_condition(&el)));
            }
        }
    })
    .await
    .map_err(|_| anyhow!("the server did not answer the barrier ping"))??;
    let send_secs = send_start.elapsed().as_secs_f64();
    // Let any asynchronous store writes finish.
    tokio::time::sleep(Duration::from_secs(1)).await;
    // 3. The receiver logs in; time until all K have arrived.
    let cpu = CpuMeter::start(ctx);
    let t0 = Instant::now();
    let mut rx = client::login(
        &ctx.target,
        &receiver_name,
        first + 1,
        LoginSteps {
            presence: false,
            roster: true,
        },
    )
    .await?;
    let login_done = t0.elapsed();
    rx.conn.send("<presence/>").await?;
    let presence_at = t0.elapsed();
    let mut seen = vec![false; messages];
    let (mut got, mut dups, mut first_at) = (0usize, 0usize, None);
    let mut delayed = 0usize;
    let deadline = Duration::from_secs(wait_secs);
    while got < messages {
        let left = deadline.saturating_sub(t0.elapsed());
        if left.is_zero() {
            break;
        }
        match tokio::time::timeout(left, rx.conn.next_stanza()).await {
            Ok(Ok(el)) => {
                if el.name == "message"
                    && let Some(body) = message_body(&el)
                    && let Some((r, _, i)) = parse_body(&body, "ko")
                    && r == run
                    && (i as usize) < messages
                {
                    first_at.get_or_insert(t0.elapsed());
                    if el.has_child("delay", "urn:xmpp:delay") {
                        delayed += 1;
                    }
                    if seen[i as usize] {
                        dups += 1;
                    } else {
                        seen[i as usize] = true;
                        got += 1;
                    }
                } else if let Some(reply) = client::auto_reply(&el) {
                    rx.conn.send(&reply).await?;
                }
            }
            Ok(Err(e)) => {
                errors.add(&e);
                break;
            }
            Err(_) => break,
        }
    }
    let all_at = t0.elapsed();
    let (server_cpu, client_cpu, _) = cpu.stop(ctx);
    close(rx.conn).await;
    close(tx.conn).await;
    let lost = messages - got;
    let total_s = all_at.as_secs_f64();
    let mut lines = vec![format!(
        "offline [{}]: {messages} messages to an offline user (stored in {send_secs:.2} s, {leftovers} leftovers drained first), TLS {}",
        ctx.cli.label,
        rx.tls.as_deref().unwrap_or("off")
    )];
    lines.extend(table(
        &[
            "login ms",
            "first msg ms",
            "all delivered s (from connect)",
            "from presence s",
            "delivered",
            "lost",
            "dups",
            "server CPU ms",
            "client CPU ms",
        ],
        &[vec![
            format!("{:.1}", login_done.as_secs_f64() * 1e3),
            first_at
                .map(|f| format!("{:.1}", f.as_secs_f64() * 1e3))
                .unwrap_or("-".into()),
            if lost == 0 {
                format!("{total_s:.3}")
            } else {
                format!("{total_s:.3} (INCOMPLETE)")
            },
            format!("{:.3}", (all_at - presence_at).as_secs_f64()),
            got.to_string(),
            lost.to_string(),
            dups.to_string(),
            server_cpu
                .map(|c| format!("{:.1}", c as f64 / 1e3))
                .unwrap_or("-".into()),
            format!("{:.1}", client_cpu as f64 / 1e3),
        ]],
    ));
    lines.push(format!(
        "with XEP-0203 delay: {delayed}; sender got {sender_errors} error replies"
    ));
    lines.extend(errors.lines());
    let mut json = header(ctx, "offline");
    json["results"] = json!({
        "messages": messages, "delivered": got, "lost": lost, "duplicates": dups,
        "login_ms": login_done.as_secs_f64() * 1e3,
        "first_message_ms": first_at.map(|f| f.as_secs_f64() * 1e3),
        "all_delivered_s": total_s, "all_delivered_after_presence_s": (all_at - presence_at).as_secs_f64(),
        "store_secs": send_secs, "leftovers_drained": leftovers, "delayed": delayed,
        "server_cpu_us": server_cpu, "client_cpu_us": client_cpu, "tls": rx.tls,
    });
    json["errors"] = json!(errors.snapshot());
    Ok(Report { lines, json })
}

// ---------------------------------------------------------------------------------
// durable (XEP-0198)

struct DurableShared {
    run: u32,
    acked: AtomicU64,
    sent: AtomicU64,
    delivered: AtomicU64,
    notify: Notify,
    sending: std::sync::atomic::AtomicBool,
}

/// Enables SM on a logged-in session; Err if the server refuses.
async fn enable_sm(s: &mut Session) -> Result<()> {
    s.conn.send(&format!("<enable xmlns='{NS_SM}'/>")).await?;
    loop {
        let el = s.conn.next_stanza().await?;
        if el.ns == NS_SM {
            return match el.name.as_str() {
                "enabled" => Ok(()),
                other => Err(anyhow!("<enable/> answered with <{other}/>")),
            };
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn durable(
    ctx: &Ctx,
    pairs: usize,
    first: usize,
    secs: u64,
    window: u64,
    ack_every: u64,
    body_bytes: usize,
) -> Result<Report> {
    if pairs == 0 || pairs > 5000 || secs > 3600 {
        bail!("durable: 1..=5000 pairs, at most 3600 s");
    }
    let errors = Errors::default();
    let steps = LoginSteps {
        presence: true,
        roster: true,
    };
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for p in 0..pairs {
        let (si, ri) = (first + 2 * p, first + 2 * p + 1);
        let s = client::login(&ctx.target, &user(ctx, si), si, steps).await?;
        let r = client::login(&ctx.target, &user(ctx, ri), ri, steps).await?;
        senders.push(s);
        receivers.push((user(ctx, ri), r));
    }
    let tls = senders.first().and_then(|s| s.tls.clone());
    let mut json = header(ctx, "durable");
    if !senders.iter().all(|s| s.sm_offered) {
        let note = "server does not offer XEP-0198 stream management: no acked rate to report";
        for s in senders {
            close(s.conn).await;
        }
        for (_, r) in receivers {
            close(r.conn).await;
        }
        json["results"] = json!({"sm_offered": false, "note": note, "tls": tls});
        return Ok(Report {
            lines: vec![format!("durable [{}]: {note}", ctx.cli.label)],
            json,
        });
    }
    for s in &mut senders {
        enable_sm(s).await?;
    }
    let run: u32 = rand::random();
    let shared: Vec<Arc<DurableShared>> = (0..pairs)
        .map(|_| {
            Arc::new(DurableShared {
                run,
                acked: AtomicU64::new(0),
                sent: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                notify: Notify::new(),
                sending: true.into(),
            })
        })
        .collect();
    let disconnects = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    // Receivers count deliveries.
    for ((_, r), sh) in receivers.into_iter().zip(&shared) {
        let (mut rd, mut wr) = r.conn.into_split();
        let sh = sh.clone();
        let disconnects = disconnects.clone();
        tasks.spawn(async move {
            loop {
                match rd.next().await {
                    Ok(Some(el)) => {
                        if el.name == "message"
                            && let Some(b) = message_body(&el)
                            && parse_body(&b, "kd").is_some_and(|(r, _, _)| r == sh.run)
                        {
                            sh.delivered.fetch_add(1, Ordering::Relaxed);
                        } else if let Some(reply) = client::auto_reply(&el) {
                            let _ = client::write(&mut wr, &reply).await;
                        }
                    }
                    _ => {
                        if sh.sending.load(Ordering::Relaxed) {
                            disconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        return;
                    }
                }
            }
        });
    }
    let padding = Arc::new(pad(body_bytes));
    let cpu = CpuMeter::start(ctx);
    let stop_at = Instant::now() + Duration::from_secs(secs);
    let mut writers = JoinSet::new();
    for ((s, sh), (receiver, _)) in senders
        .into_iter()
        .zip(&shared)
        .zip((0..pairs).map(|p| (user(ctx, first + 2 * p + 1), ())))
    {
        let (mut rd, mut wr) = s.conn.into_split();
        let (reply_tx, mut reply_rx) = mpsc::channel::<String>(16);
        let sh2 = sh.clone();
        let disconnects = disconnects.clone();
        // Reader: <a h/> advances the acked count; <r/> from the server is answered.
        tasks.spawn(async move {
            let mut inbound: u32 = 0;
            loop {
                match rd.next().await {
                    Ok(Some(el)) => {
                        if el.ns == NS_SM && el.name == "a" {
                            if let Some(h) = el.get_attr("h").and_then(|h| h.parse::<u32>().ok()) {
                                // h counts modulo 2^32 (XEP-0198 §5); runs stay far below.
                                sh2.acked.fetch_max(u64::from(h), Ordering::Relaxed);
                                sh2.notify.notify_one();
                            }
                        } else if el.ns == NS_SM && el.name == "r" {
                            let _ =
                                reply_tx.try_send(format!("<a xmlns='{NS_SM}' h='{inbound}'/>"));
                        } else if el.ns == client::NS_CLIENT {
                            inbound = inbound.wrapping_add(1);
                            if let Some(reply) = client::auto_reply(&el) {
                                let _ = reply_tx.try_send(reply);
                            }
                        }
                    }
                    _ => {
                        if sh2.sending.load(Ordering::Relaxed) {
                            disconnects.fetch_add(1, Ordering::Relaxed);
                        }
                        sh2.notify.notify_one();
                        return;
                    }
                }
            }
        });
        let sh = sh.clone();
        let padding = padding.clone();
        let domain = ctx.cli.domain.clone();
        writers.spawn(async move {
            let mut sent: u64 = 0;
            let mut buf = String::new();
            while Instant::now() < stop_at {
                while let Ok(reply) = reply_rx.try_recv() {
                    buf.push_str(&reply);
                }
                if sent - sh.acked.load(Ordering::Relaxed) + ack_every > window {
                    if !buf.is_empty() {
                        client::write(&mut wr, &buf).await?;
                        buf.clear();
                    }
                    let _ = tokio::time::timeout(Duration::from_millis(100), sh.notify.notified()).await;
                    continue;
                }
                for _ in 0..ack_every {
                    buf.push_str(&format!(
                        "<message to='{receiver}@{domain}' type='chat' id='d{sent}'><body>kd {} 0 {sent} {padding}</body></message>",
                        sh.run
                    ));
                    sent += 1;
                }
                buf.push_str(&format!("<r xmlns='{NS_SM}'/>"));
                client::write(&mut wr, &buf).await?;
                buf.clear();
                sh.sent.store(sent, Ordering::Relaxed);
            }
            // Final ack request, then wait briefly for everything to be acked.
            client::write(&mut wr, &format!("<r xmlns='{NS_SM}'/>")).await?;
            let wait_until = Instant::now() + Duration::from_secs(5);
            while sh.acked.load(Ordering::Relaxed) < sent && Instant::now() < wait_until {
                let _ = tokio::time::timeout(Duration::from_millis(100), sh.notify.notified()).await;
            }
            Ok::<_, anyhow::Error>(wr)
        });
    }
    // Acked count at the end of the sending window (the rate), then after the wait.
    tokio::time::sleep_until(stop_at.into()).await;
    let acked_in_window: u64 = shared.iter().map(|s| s.acked.load(Ordering::Relaxed)).sum();
    let (server_cpu_window, client_cpu, wall) = cpu.stop(ctx);
    let mut wrs = Vec::new();
    while let Some(r) = writers.join_next().await {
        match r {
            Ok(Ok(wr)) => wrs.push(wr),
            Ok(Err(e)) => errors.add(&e),
            Err(e) => errors.add(&anyhow!("{e}")),
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    for s in &shared {
        s.sending.store(false, Ordering::Relaxed);
    }
    let sent: u64 = shared.iter().map(|s| s.sent.load(Ordering::Relaxed)).sum();
    let acked: u64 = shared.iter().map(|s| s.acked.load(Ordering::Relaxed)).sum();
    let delivered: u64 = shared
        .iter()
        .map(|s| s.delivered.load(Ordering::Relaxed))
        .sum();
    for mut wr in wrs {
        let _ = client::write(&mut wr, "</stream:stream>").await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
    let rate = acked_in_window as f64 / (wall as f64 / 1e6);
    let cpu_per = server_cpu_window.map(|c| c as f64 / acked_in_window.max(1) as f64);
    let unacked = sent.saturating_sub(acked);
    let lost = sent.saturating_sub(delivered);
    let mut lines = vec![format!(
        "durable [{}]: {pairs} senders with XEP-0198 for {secs} s, window {window}, <r/> every {ack_every}, TLS {}",
        ctx.cli.label,
        tls.as_deref().unwrap_or("off")
    )];
    lines.extend(table(
        &[
            "acked msg/s",
            "sent",
            "acked",
            "unacked",
            "delivered",
            "lost",
            "disconnects",
            "server CPU µs/acked msg",
        ],
        &[vec![
            format!("{rate:.0}"),
            sent.to_string(),
            acked.to_string(),
            unacked.to_string(),
            delivered.to_string(),
            lost.to_string(),
            disconnects.load(Ordering::Relaxed).to_string(),
            cpu_per.map(|c| format!("{c:.1}")).unwrap_or("-".into()),
        ]],
    ));
    lines.extend(saturation_note(client_cpu, wall));
    lines.extend(errors.lines());
    json["results"] = json!({
        "sm_offered": true, "pairs": pairs, "secs": secs, "window": window, "ack_every": ack_every,
        "acked_per_s": rate, "sent": sent, "acked": acked, "unacked": unacked,
        "delivered": delivered, "lost": lost, "disconnects": disconnects.load(Ordering::Relaxed),
        "server_cpu_us_per_acked_msg": cpu_per, "client_cpu_us": client_cpu, "tls": tls,
    });
    json["errors"] = json!(errors.snapshot());
    Ok(Report { lines, json })
}

/// The highest rate at which every step run at that rate or lower held: a
/// step that holds above one that failed (the failure a stall, the step
/// above lucky) does not count. `None` when the lowest step failed.
fn held_throughout(steps: &[(u32, bool)]) -> Option<u32> {
    let mut sorted = steps.to_vec();
    sorted.sort_by_key(|&(rate, held)| (rate, held));
    sorted
        .iter()
        .take_while(|&&(_, held)| held)
        .map(|&(rate, _)| rate)
        .last()
}

#[cfg(test)]
mod tests {
    use super::held_throughout;

    #[test]
    fn held_throughout_stops_at_the_first_failure_by_rate() {
        let run = [(250, true), (500, true), (1000, false), (2000, true)];
        assert_eq!(held_throughout(&run), Some(500));
        assert_eq!(held_throughout(&[(500, true), (250, true)]), Some(500));
        assert_eq!(held_throughout(&[(250, false), (500, true)]), None);
        // A rate run twice counts as held only if it held both times.
        assert_eq!(
            held_throughout(&[(250, true), (500, true), (500, false)]),
            Some(250)
        );
        assert_eq!(held_throughout(&[]), None);
    }
}
