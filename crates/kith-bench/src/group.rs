//! The `group` scenario: one XEP-0045 room with G members, N of them online and
//! joined, S senders at stepped aggregate rates; every online member (the
//! senders' own reflections included) records end-to-end latency per step.
//!
//! Only standard XEP-0045 is used, so the same run measures kith, ejabberd and
//! Prosody: create the room by joining it (§10.1.1), submit the owner's
//! configuration form if the room is new (§10.1.2 — ejabberd and Prosody keep a
//! new room locked until then), grant `member` affiliations (§9.3, one item per
//! IQ, pipelined: Prosody 0.12 reads one item per request), join (§7.2, wait for
//! the self-presence with status 110), send `groupchat` (§7.4), destroy (§10.9).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use hdrhistogram::Histogram;
use kith_proto::xml::escape;
use serde_json::json;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::Ctx;
use crate::client::{self, Conn, LoginSteps};
use crate::report::{Errors, Report, ms, table};
use crate::scenarios::{
    CpuMeter, bounded, header, message_body, new_hist, now_us, pad, saturation_note, user,
};

const NS_MUC: &str = "http://jabber.org/protocol/muc";
const NS_USER: &str = "http://jabber.org/protocol/muc#user";
const NS_ADMIN: &str = "http://jabber.org/protocol/muc#admin";
const NS_OWNER: &str = "http://jabber.org/protocol/muc#owner";
/// Group messages one run may send (each online member keeps one bit per message
/// to spot duplicates).
const MAX_MESSAGES: u64 = 2_000_000;

pub struct GroupOpts {
    pub members: usize,
    pub online: usize,
    pub senders: usize,
    pub first: usize,
    pub rates: Vec<u32>,
    pub step_secs: u64,
    pub drain_secs: u64,
    pub p99_ms: u64,
    pub body_bytes: usize,
    pub keep_going: bool,
    pub concurrency: usize,
    pub batch: usize,
    pub muc_domain: String,
}

struct Shared {
    run: u32,
    /// Next global message number (its bit in each member's seen-set).
    next: AtomicU64,
    sent: Vec<AtomicU64>,
    /// First copies received, per step (summed over members).
    received: Vec<AtomicU64>,
    /// Further copies of a message a member already had.
    duplicates: Vec<AtomicU64>,
    hist: Vec<std::sync::Mutex<Histogram<u64>>>,
    links: client::LinkCounters,
}

/// `kg RUN STEP T_US N padding`.
fn parse(body: &str) -> Option<(u32, usize, u64, u64)> {
    let mut it = body.split(' ');
    if it.next()? != "kg" {
        return None;
    }
    Some((
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    ))
}

/// What a join answered: the status codes of the self-presence.
struct Joined {
    created: bool,
}

/// Joins `room` as `nick` (§7.2) and waits for the self-presence (status 110, or
/// the presence from our own occupant JID); other occupants' presences, the
/// subject and pings are handled or skipped meanwhile.
async fn join(conn: &mut Conn, room: &str, nick: &str, timeout: Duration) -> Result<Joined> {
    let me = format!("{room}/{nick}");
    // §7.2.15: no history (there is none before the load; ask for none anyway).
    conn.send(&format!(
        "<presence to='{}'><x xmlns='{NS_MUC}'><history maxstanzas='0'/></x></presence>",
        escape(&me)
    ))
    .await?;
    tokio::time::timeout(timeout, async {
        loop {
            let el = conn.next_stanza().await?;
            if el.name == "presence" && el.get_attr("from") == Some(me.as_str()) {
                if el.get_attr("type") == Some("error") {
                    bail!("join refused: {}", client::error_condition(&el));
                }
                let codes: Vec<String> = el
                    .get_child("x", NS_USER)
                    .map(|x| {
                        x.elements()
                            .filter(|s| s.name == "status")
                            .filter_map(|s| s.get_attr("code").map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                return Ok(Joined {
                    created: codes.iter().any(|c| c == "201"),
                });
            }
            if let Some(reply) = client::auto_reply(&el) {
                conn.send(&reply).await?;
            }
        }
    })
    .await
    .map_err(|_| anyhow!("join timed out after {timeout:?}"))?
}

/// Sends the IQs and waits for all their answers; returns the failures by condition.
async fn iqs(conn: &mut Conn, iqs: &[(String, String)], timeout: Duration) -> Result<Vec<String>> {
    let mut batch = String::new();
    for (_, xml) in iqs {
        batch.push_str(xml);
    }
    conn.send(&batch).await?;
    let mut waiting: std::collections::HashSet<&str> =
        iqs.iter().map(|(id, _)| id.as_str()).collect();
    let mut failures = Vec::new();
    tokio::time::timeout(timeout, async {
        while !waiting.is_empty() {
            let el = conn.next_stanza().await?;
            if el.name == "iq"
                && matches!(el.get_attr("type"), Some("result" | "error"))
                && let Some(id) = el.get_attr("id")
                && waiting.remove(id)
            {
                if el.get_attr("type") == Some("error") {
                    failures.push(client::error_condition(&el));
                }
            } else if let Some(reply) = client::auto_reply(&el) {
                conn.send(&reply).await?;
            }
        }
        Ok::<_, anyhow::Error>(())
    })
    .await
    .map_err(|_| anyhow!("{} IQs unanswered after {timeout:?}", waiting.len()))??;
    Ok(failures)
}

/// Reads one member's stream: counts each group message of this run once per
/// member, duplicates apart, and records its latency.
async fn reader(rd: client::Reader, replies: mpsc::Sender<String>, shared: Arc<Shared>) {
    let mut seen: Vec<u64> = Vec::new();
    let on_message = |el: &kith_proto::Element| {
        let Some((run, step, t, n)) = message_body(el).as_deref().and_then(parse) else {
            return;
        };
        if run != shared.run || step >= shared.received.len() || n >= MAX_MESSAGES {
            return;
        }
        let (word, bit) = ((n / 64) as usize, 1u64 << (n % 64));
        if seen.len() <= word {
            seen.resize(word + 1, 0);
        }
        if seen[word] & bit != 0 {
            shared.duplicates[step].fetch_add(1, Ordering::Relaxed);
            return;
        }
        seen[word] |= bit;
        shared.received[step].fetch_add(1, Ordering::Relaxed);
        if let Ok(mut h) = shared.hist[step].lock() {
            let _ = h.record(now_us().saturating_sub(t).max(1));
        }
    };
    client::read_loop(rd, replies, &shared.links, on_message).await;
}

/// One member's write side: answers pings; a sender also sends its share of the
/// step's rate (`senders / rate` seconds apart, random phase). Gives the write
/// half back when the run is over (`None`: the connection failed).
#[allow(clippy::too_many_arguments)]
async fn writer(
    mut wr: client::Writer,
    sender: bool,
    senders: usize,
    room: Arc<String>,
    mut control: watch::Receiver<Option<(usize, u32)>>,
    mut replies: mpsc::Receiver<String>,
    shared: Arc<Shared>,
    padding: Arc<String>,
) -> Option<client::Writer> {
    let make = |step: usize, xml: &mut String| {
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        n < MAX_MESSAGES
            && write!(
                xml,
                "<message to='{room}' type='groupchat' id='g{n}'><body>kg {} {step} {} {n} {padding}</body></message>",
                shared.run,
                now_us()
            )
            .is_ok()
    };
    let sent = |step: usize| {
        shared.sent[step].fetch_add(1, Ordering::Relaxed);
    };
    match client::paced(
        &mut wr,
        sender,
        senders,
        &mut control,
        &mut replies,
        make,
        sent,
    )
    .await
    {
        client::Paced::Done => Some(wr),
        client::Paced::Failed => None,
    }
}

pub async fn group(ctx: &Ctx, o: GroupOpts) -> Result<Report> {
    if o.members < 2 || o.members > 20_000 {
        bail!("group: 2..=20000 members");
    }
    if o.online == 0 || o.online > o.members || o.senders == 0 || o.senders > o.online {
        bail!("group: 1 <= --senders <= --online <= --members");
    }
    if o.rates.is_empty() || o.rates.len() > 100 || o.step_secs == 0 || o.step_secs > 3600 {
        bail!("group: 1..=100 rates, 1..=3600 s steps");
    }
    let planned: u64 = o.rates.iter().map(|&r| u64::from(r) * o.step_secs).sum();
    if planned > MAX_MESSAGES {
        bail!("group: the steps would send {planned} messages; at most {MAX_MESSAGES}");
    }
    let errors = Errors::default();
    let timeout = ctx.target.timeout;
    let run: u32 = rand::random();
    let room = format!("benchgroup-{run}@{}", o.muc_domain);
    let steps = LoginSteps {
        presence: true,
        roster: true,
    };
    let setup_start = Instant::now();

    // 1. The owner creates the room (§10.1.1) and configures it if it is new.
    let owner_name = user(ctx, o.first);
    let mut owner = client::login(&ctx.target, &owner_name, o.first, steps).await?;
    let tls = owner.tls.clone();
    let joined = join(&mut owner.conn, &room, &owner_name, timeout).await?;
    if joined.created {
        // §10.1.2: the owner's configuration form, which unlocks the room on
        // ejabberd and Prosody (kith creates it unlocked and accepts it too).
        let form = format!(
            "<iq type='set' id='cfg' to='{room}'><query xmlns='{NS_OWNER}'><x xmlns='jabber:x:data' type='submit'>\
             <field var='FORM_TYPE'><value>http://jabber.org/protocol/muc#roomconfig</value></field>\
             <field var='muc#roomconfig_persistentroom'><value>1</value></field>\
             <field var='muc#roomconfig_membersonly'><value>1</value></field>\
             </x></query></iq>"
        );
        let failed = iqs(&mut owner.conn, &[("cfg".into(), form)], timeout).await?;
        if let Some(cond) = failed.first() {
            bail!("the room configuration was refused: {cond}");
        }
    }
    // 2. Member affiliations (§9.3), `batch` IQs in flight.
    let member_indices: Vec<usize> = (o.first + 1..o.first + o.members).collect();
    let mut granted = 0usize;
    for (b, chunk) in member_indices.chunks(o.batch.max(1)).enumerate() {
        let batch: Vec<(String, String)> = chunk
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                let id = format!("aff{b}-{k}");
                let xml = format!(
                    "<iq type='set' id='{id}' to='{room}'><query xmlns='{NS_ADMIN}'>\
                     <item affiliation='member' jid='{}@{}'/></query></iq>",
                    escape(&user(ctx, i)),
                    escape(&ctx.cli.domain)
                );
                (id, xml)
            })
            .collect();
        let failed = iqs(&mut owner.conn, &batch, timeout).await?;
        granted += chunk.len() - failed.len();
        for cond in failed {
            errors.add_kind(&format!("member affiliation refused: {cond}"));
        }
    }
    let affiliations_secs = setup_start.elapsed().as_secs_f64();

    // 3. The online members log in and join; each starts reading at once, so
    // that the others' join presences don't pile up.
    let shared = Arc::new(Shared {
        run,
        next: AtomicU64::new(0),
        sent: o.rates.iter().map(|_| AtomicU64::new(0)).collect(),
        received: o.rates.iter().map(|_| AtomicU64::new(0)).collect(),
        duplicates: o.rates.iter().map(|_| AtomicU64::new(0)).collect(),
        hist: o
            .rates
            .iter()
            .map(|_| std::sync::Mutex::new(new_hist()))
            .collect(),
        links: client::LinkCounters::default(),
    });
    let join_start = Instant::now();
    let mut readers = JoinSet::new();
    let (owner_rd, owner_wr) = owner.conn.into_split();
    let (reply_tx, reply_rx) = mpsc::channel(8);
    readers.spawn(reader(owner_rd, reply_tx, shared.clone()));
    let mut members = vec![(o.first, owner_wr, reply_rx)];
    let joined_members = bounded(
        o.first + 1..o.first + o.online,
        o.concurrency,
        &errors,
        |i| {
            let target = ctx.target.clone();
            let name = user(ctx, i);
            let room = room.clone();
            let shared = shared.clone();
            async move {
                let mut s = client::login(&target, &name, i, steps).await?;
                join(&mut s.conn, &room, &name, target.timeout).await?;
                let (rd, wr) = s.conn.into_split();
                let (reply_tx, reply_rx) = mpsc::channel(8);
                let handle = tokio::spawn(reader(rd, reply_tx, shared));
                Ok((i, wr, reply_rx, handle))
            }
        },
    )
    .await;
    let mut reader_handles = Vec::new();
    for (i, wr, rx, handle) in joined_members {
        members.push((i, wr, rx));
        reader_handles.push(handle);
    }
    members.sort_by_key(|(i, _, _)| *i);
    let online = members.len();
    let join_secs = join_start.elapsed().as_secs_f64();
    let senders = o.senders.min(online);
    let (control_tx, control_rx) = watch::channel::<Option<(usize, u32)>>(None);
    let padding = Arc::new(pad(o.body_bytes));
    let room_arc = Arc::new(room.clone());
    let mut writers = JoinSet::new();
    for (k, (i, wr, rx)) in members.into_iter().enumerate() {
        let task = writer(
            wr,
            k < senders,
            senders,
            room_arc.clone(),
            control_rx.clone(),
            rx,
            shared.clone(),
            padding.clone(),
        );
        writers.spawn(async move { (i, task.await) });
    }
    // Let the join presences settle before the first step.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 4. The steps.
    let mut rows = Vec::new();
    let mut steps_json = Vec::new();
    let mut held: Option<u32> = None;
    let mut held_step: Option<usize> = None;
    // The highest step with nothing lost whatever its p99: the capacity figure on
    // a machine too loaded for the p99 target.
    let mut lossless_step: Option<usize> = None;
    let mut failures = 0;
    let mut warnings = Vec::new();
    let mut judged: Vec<(u64, u64)> = Vec::new();
    let secs = o.step_secs as f64;
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
        let expected = sent * online as u64;
        let received = shared.received[step].load(Ordering::Relaxed);
        let dups = shared.duplicates[step].load(Ordering::Relaxed);
        let lost = expected.saturating_sub(received);
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
        if ok && held.is_none_or(|h| rate >= h) {
            held = Some(rate);
            held_step = Some(step);
        }
        let lossless = received > 0 && lost == 0 && stanza_errors == 0 && disconnects == 0;
        if lossless && lossless_step.is_none_or(|s| rate >= o.rates[s]) {
            lossless_step = Some(step);
        }
        // Every copy the server wrote counts as a delivered stanza for CPU.
        let cpu_per = server_cpu.map(|c| c as f64 / (received + dups).max(1) as f64);
        let server_util = server_cpu.map(|c| c as f64 / wall as f64 * 100.0);
        if let Some(w) = saturation_note(client_send_cpu, send_wall) {
            warnings.push(format!("step {rate}/s: {w}"));
        }
        if dups > 0 {
            warnings.push(format!(
                "step {rate}/s: {dups} DUPLICATE deliveries (a member got the same message twice): a server bug"
            ));
        }
        rows.push(vec![
            rate.to_string(),
            sent.to_string(),
            expected.to_string(),
            format!("{:.0}", received as f64 / secs),
            lost.to_string(),
            dups.to_string(),
            ms(h.value_at_quantile(0.5)),
            ms(p99),
            ms(h.value_at_quantile(0.999)),
            ms(h.max()),
            (stanza_errors + disconnects).to_string(),
            server_util
                .map(|u| format!("{u:.0}%"))
                .unwrap_or("-".into()),
            cpu_per.map(|c| format!("{c:.1}")).unwrap_or("-".into()),
            format!(
                "{:.0}%",
                client_send_cpu as f64 / send_wall.max(1) as f64 * 100.0
            ),
            if ok { "held" } else { "FAILED" }.into(),
        ]);
        steps_json.push(json!({
            "offered_per_s": rate, "sent": sent, "expected_deliveries": expected,
            "delivered": received, "delivered_per_s": received as f64 / secs,
            "lost": lost, "duplicates": dups,
            "p50_ms": h.value_at_quantile(0.5) as f64 / 1e3, "p99_ms": p99 as f64 / 1e3,
            "p999_ms": h.value_at_quantile(0.999) as f64 / 1e3, "max_ms": h.max() as f64 / 1e3,
            "stanza_errors": stanza_errors, "disconnects": disconnects,
            "server_cpu_us": server_cpu, "server_cpu_percent": server_util,
            "server_cpu_us_per_delivered": cpu_per,
            "client_cpu_percent": client_send_cpu as f64 / send_wall.max(1) as f64 * 100.0,
            "held": ok,
        }));
        judged.push((received, dups));
        if ok {
            failures = 0;
        } else {
            failures += 1;
            if !o.keep_going && failures >= 2 {
                break;
            }
        }
        if shared.links.disconnects.load(Ordering::Relaxed) as usize >= online {
            warnings.push("every member disconnected; stopping".into());
            break;
        }
    }
    // Copies that arrived after a step was judged were late, not lost.
    let mut late_total = 0;
    for (step, (at_received, at_dups)) in judged.iter().enumerate() {
        let now = shared.received[step].load(Ordering::Relaxed);
        let late = now.saturating_sub(*at_received);
        let late_dups = shared.duplicates[step]
            .load(Ordering::Relaxed)
            .saturating_sub(*at_dups);
        let expected = shared.sent[step].load(Ordering::Relaxed) * online as u64;
        late_total += late;
        steps_json[step]["arrived_after_judgement"] = json!(late);
        steps_json[step]["duplicates_after_judgement"] = json!(late_dups);
        steps_json[step]["never_arrived"] = json!(expected.saturating_sub(now));
        if late > 0 || expected > now || late_dups > 0 {
            warnings.push(format!(
                "step {}/s: {late} arrived after the step was judged (late), {} never arrived by the end of the run (lost), {late_dups} late duplicates",
                o.rates[step],
                expected.saturating_sub(now)
            ));
        }
    }

    // 5. Close: the owner destroys the room (§10.9) so the anchors don't keep it.
    shared.links.stopping.store(true, Ordering::Relaxed);
    drop(control_tx);
    let mut owner_wr = None;
    let mut others = Vec::new();
    while let Some(r) = writers.join_next().await {
        match r {
            Ok((i, Some(wr))) if i == o.first => owner_wr = Some(wr),
            Ok((_, Some(wr))) => others.push(wr),
            Ok((_, None)) => {}
            Err(e) => errors.add(&anyhow!("writer task failed: {e}")),
        }
    }
    let destroyed = match owner_wr.as_mut() {
        Some(wr) => client::write(
            wr,
            &format!(
                "<iq type='set' id='destroy' to='{room}'><query xmlns='{NS_OWNER}'><destroy/></query></iq>"
            ),
        )
        .await
        .is_ok(),
        None => false,
    };
    // The destroy's answer isn't awaited (the readers own the read halves): give it a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    for mut wr in others.into_iter().chain(owner_wr) {
        let _ = client::write(&mut wr, "<presence type='unavailable'/></stream:stream>").await;
    }
    let closing = async {
        while readers.join_next().await.is_some() {}
        for h in reader_handles {
            let _ = h.await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), closing).await;
    readers.abort_all();

    let mut lines = vec![format!(
        "group [{}]: room {room}, {} members ({granted} affiliations granted in {affiliations_secs:.1} s), \
         {online} online and joined ({join_secs:.1} s), {senders} senders, TLS {}, {} s steps + {} s drain, target p99 < {} ms",
        ctx.cli.label,
        o.members,
        tls.as_deref().unwrap_or("off"),
        o.step_secs,
        o.drain_secs,
        o.p99_ms
    )];
    lines.extend(table(
        &[
            "offered/s",
            "sent",
            "expected",
            "delivered/s",
            "lost",
            "dups",
            "p50 ms",
            "p99 ms",
            "p99.9 ms",
            "max ms",
            "errors",
            "server CPU",
            "CPU µs/delivered",
            "client CPU",
            "",
        ],
        &rows,
    ));
    let held_delivered = held_step.map(|s| steps_json[s]["delivered_per_s"].clone());
    lines.push(match (held, &held_delivered) {
        (Some(r), Some(d)) => format!(
            "highest rate held (p99 < {} ms, nothing lost): {r} group msg/s = {} delivered stanzas/s",
            o.p99_ms,
            d.as_f64().map(|d| format!("{d:.0}")).unwrap_or_default()
        ),
        _ => format!("no step held (p99 < {} ms, nothing lost)", o.p99_ms),
    });
    let at = |s: Option<usize>, key: &str| s.map(|s| steps_json[s][key].clone());
    if let Some(s) = lossless_step {
        lines.push(format!(
            "highest rate with nothing lost (any p99): {} group msg/s = {:.0} delivered stanzas/s, p99 {:.1} ms",
            o.rates[s],
            steps_json[s]["delivered_per_s"].as_f64().unwrap_or(0.0),
            steps_json[s]["p99_ms"].as_f64().unwrap_or(0.0)
        ));
    }
    lines.push(format!(
        "copies that arrived after their step was judged: {late_total}; room destroyed: {}",
        if destroyed { "requested" } else { "no" }
    ));
    lines.extend(warnings.iter().cloned());
    lines.extend(errors.lines());
    let held_cpu = at(held_step, "server_cpu_us_per_delivered");
    let lossless_delivered = at(lossless_step, "delivered_per_s");
    let lossless_cpu = at(lossless_step, "server_cpu_us_per_delivered");
    let lossless_p99 = at(lossless_step, "p99_ms");
    let mut json = header(ctx, "group");
    json["results"] = json!({
        "room": room, "members": o.members, "affiliations_granted": granted,
        "online_requested": o.online, "online": online, "senders": senders,
        "steps": steps_json, "highest_rate_held": held,
        "delivered_per_s_at_highest_held": held_delivered,
        "server_cpu_us_per_delivered_at_highest_held": held_cpu,
        "highest_rate_lossless": lossless_step.map(|s| o.rates[s]),
        "delivered_per_s_at_highest_lossless": lossless_delivered,
        "server_cpu_us_per_delivered_at_highest_lossless": lossless_cpu,
        "p99_ms_at_highest_lossless": lossless_p99,
        "p99_target_ms": o.p99_ms, "step_secs": o.step_secs, "drain_secs": o.drain_secs,
        "body_bytes": o.body_bytes, "tls": tls, "warnings": warnings,
        "late_total": late_total, "setup_affiliations_secs": affiliations_secs,
        "setup_join_secs": join_secs,
    });
    json["errors"] = json!(errors.snapshot());
    Ok(Report { lines, json })
}
