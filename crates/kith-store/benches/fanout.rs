//! The cost of one group message's fan-out into the inbox logs: one
//! `inbox_append_all` of the room's archive entry plus one entry per member, in
//! one transaction through the group-commit writer (what `features/muc/history.rs`
//! does for every message to a group).
//!
//! `cargo bench -p kith-store --bench fanout` (SQLite in a temporary file; set
//! `KITH_BENCH_PG_URL` to a database URL to measure PostgreSQL too: it creates
//! `bench_member_*` accounts there).

use kith_store::bench::credentials;
use kith_store::{NewInboxEntry, Store};

fn main() {
    divan::main();
}

const ROOM: &str = "bench@conference.localhost";

struct Setup {
    runtime: tokio::runtime::Runtime,
    store: Store,
    members: Vec<String>,
    _dir: Option<tempfile::TempDir>,
}

fn setup(members: usize, url: Option<String>) -> Setup {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (url, dir) = match url {
        Some(url) => (url, None),
        None => {
            let dir = tempfile::tempdir().expect("tempdir");
            (
                format!("sqlite://{}", dir.path().join("bench.db").display()),
                Some(dir),
            )
        }
    };
    let names: Vec<String> = (0..members).map(|i| format!("bench_member_{i}")).collect();
    let store = runtime.block_on(async {
        let store = Store::open(&url).await.expect("open store");
        for name in &names {
            store
                .create_user(name, &credentials())
                .await
                .expect("create user");
        }
        store
            .muc_create_room(ROOM, "{}", "bench_member_0@localhost", 1)
            .await
            .expect("create room");
        store
    });
    Setup {
        runtime,
        store,
        members: names,
        _dir: dir,
    }
}

const XML: &str = "<message xmlns='jabber:client' type='groupchat' id='m-0001' \
    from='bench@conference.localhost/alice'><body>Hello everyone, this is a message to a \
    large group, long enough to look like a real chat line.</body>\
    <origin-id xmlns='urn:xmpp:sid:0' id='o-0001'/>\
    <occupant-id xmlns='urn:xmpp:occupant-id:0' id='Qk9CQk9CQk9CQk9C'/>\
    <stanza-id xmlns='urn:xmpp:sid:0' id='abcdefghijklmnopqrst' by='bench@conference.localhost'/>\
    </message>";

fn fan_out(setup: &Setup, id: &str) {
    let body = Some("Hello everyone");
    let mut entries = Vec::with_capacity(setup.members.len() + 1);
    entries.push((
        ROOM,
        NewInboxEntry {
            stanza_id: id,
            sender: "bench@conference.localhost/alice",
            kind: "groupchat",
            xml: XML,
            at_micros: 1,
            peer: "bench_member_0@localhost",
            direction: "in",
            body,
            origin: None,
        },
    ));
    for member in &setup.members {
        entries.push((
            member.as_str(),
            NewInboxEntry {
                stanza_id: "",
                sender: "bench@conference.localhost/alice",
                kind: "groupchat",
                xml: XML,
                at_micros: 1,
                peer: ROOM,
                direction: "in",
                body: None,
                origin: None,
            },
        ));
    }
    let results = setup
        .runtime
        .block_on(setup.store.inbox_append_all(&entries))
        .expect("append");
    assert!(results.iter().all(Result::is_ok));
}

/// One message to a group of `members` members on SQLite.
#[divan::bench(args = [200, 1024], sample_count = 20, sample_size = 1)]
fn sqlite_group_message(bencher: divan::Bencher, members: usize) {
    let setup = setup(members, None);
    let mut n = 0u64;
    bencher.bench_local(|| {
        n += 1;
        fan_out(&setup, &format!("id-{n}"));
    });
}

/// The same on PostgreSQL, when `KITH_BENCH_PG_URL` is set.
#[divan::bench(args = [200, 1024], sample_count = 20, sample_size = 1)]
fn postgres_group_message(bencher: divan::Bencher, members: usize) {
    let Ok(url) = std::env::var("KITH_BENCH_PG_URL") else {
        bencher.bench_local(|| {});
        return;
    };
    let setup = setup(members, Some(url));
    let mut n = 0u64;
    bencher.bench_local(|| {
        n += 1;
        fan_out(&setup, &format!("pg-{members}-{n}"));
    });
}
