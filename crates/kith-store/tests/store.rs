//! Behaviour tests for `kith-store`, run against SQLite always and against
//! PostgreSQL when `KITH_TEST_PG_URL` names an admin URL (e.g.
//! `postgres://postgres@127.0.0.1:55432/postgres`).
//!
//! PostgreSQL isolation: every test creates its own database
//! (`kith_t_<pid>_<n>_<nanos>`) through the admin URL, runs against it, and
//! drops it afterwards (`DROP DATABASE … WITH (FORCE)`), also when the test
//! panics: the body runs in a spawned task whose panic is re-raised only
//! after the clean-up.

use kith_store::{
    Backend, Delivered, NewInboxEntry, RosterCap, RosterItem, ScramSecret, Store, StoreError,
    StoredCredentials, Subscription, fault,
};

// ----------------------------------------------------------------------
// harness
// ----------------------------------------------------------------------

/// A fresh, empty database for one test.
mod common;
use common::{
    TestDb, creds, in_log, in_tail, run_postgres, run_sqlite, run_sqlite_archive, run_sqlite_tail,
    tail_compacted,
};

/// A roster cap no test here reaches unless it means to.
const ROSTER_MAX: RosterCap = RosterCap {
    items: 10_000,
    requests: 10_000,
};

both!(
    migrations_idempotent,
    backend_reported,
    schema_too_new_is_refused,
    users_crud,
    credentials_round_trip,
    roster_versions_increase,
    roster_upsert_remove,
    roster_groups_round_trip,
    roster_owners_of,
    a_full_roster_refuses_new_items_only,
    roster_concurrent_writes,
    blocklist,
    vcard_and_private_overwrite,
    last_activity,
    retention_sweeps_long_logs_in_chunks,
    logins_in_a_storm_read_their_writes,
    a_closed_store_refuses_reads,
);

// The same with the log's tail on (SQLite; retention "until delivered").
all_three!(
    delete_user_removes_all_data,
    unknown_owner_writes_fail,
    inbox_seq_strictly_increasing,
    inbox_after_paging,
    inbox_concurrent_appends,
    unicode_and_large_values,
    inbox_entry_metadata_round_trip,
    devices_start_at_the_delivered_mark,
    retention_never_lets_numbers_be_reused,
    retention_deletes_old_and_delivered_entries,
    group_commit_isolates_unknown_owners,
    entries_can_be_rewritten_as_tombstones,
    duplicate_origin_keys_are_stored_once,
    append_then_runs_in_commit_order,
);

// ----------------------------------------------------------------------
// helpers
// ----------------------------------------------------------------------

fn item(contact: &str) -> RosterItem {
    RosterItem {
        contact: contact.to_owned(),
        ..RosterItem::default()
    }
}

fn entry<'a>(id: &'a str, xml: &'a str, at: i64) -> NewInboxEntry<'a> {
    NewInboxEntry {
        peer: "bob@example.org",
        direction: "in",
        body: None,
        origin: None,
        stanza_id: id,
        sender: "bob@example.org/phone",
        kind: "chat",
        xml,
        at_micros: at,
    }
}

// ----------------------------------------------------------------------
// tests
// ----------------------------------------------------------------------

async fn migrations_idempotent(db: TestDb) {
    let s = db.open().await;
    let v = s.schema_version().await.unwrap();
    assert!(v >= 1);
    assert!(s.create_user("alice", &creds(1)).await.unwrap());
    s.close().await;

    // Re-open: nothing re-applied, data intact.
    let s2 = db.open().await;
    assert_eq!(s2.schema_version().await.unwrap(), v);
    assert_eq!(s2.list_users().await.unwrap(), vec!["alice".to_string()]);

    // Two stores open concurrently on the same database.
    let (a, b) = tokio::join!(db.open(), db.open());
    assert_eq!(a.schema_version().await.unwrap(), v);
    assert_eq!(b.schema_version().await.unwrap(), v);
}

async fn backend_reported(db: TestDb) {
    let s = db.open().await;
    let expected = if db.url.starts_with("sqlite") {
        Backend::Sqlite
    } else {
        Backend::Postgres
    };
    assert_eq!(s.backend(), expected);
    let s2 = db.open_with(2).await;
    assert_eq!(s2.backend(), expected);
}

async fn schema_too_new_is_refused(db: TestDb) {
    let s = db.open().await;
    s.close().await;
    // Pretend a newer kith migrated this database.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&db.url).await.unwrap();
    sqlx::query("INSERT INTO schema_migrations (version, name, applied_at) VALUES ($1, $2, $3)")
        .bind(999_999_i64)
        .bind("from the future")
        .bind(0_i64)
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    match Store::open(&db.url).await {
        Err(StoreError::SchemaTooNew { found, .. }) => assert_eq!(found, 999_999),
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

async fn users_crud(db: TestDb) {
    let s = db.open().await;
    assert!(s.list_users().await.unwrap().is_empty());
    assert!(!s.user_exists("alice").await.unwrap());
    assert!(s.credentials("alice").await.unwrap().is_none());

    assert!(s.create_user("carol", &creds(3)).await.unwrap());
    assert!(s.create_user("alice", &creds(1)).await.unwrap());
    assert!(s.create_user("bob", &creds(2)).await.unwrap());
    // Second create: false and no change.
    assert!(!s.create_user("alice", &creds(9)).await.unwrap());
    assert_eq!(s.credentials("alice").await.unwrap(), Some(creds(1)));

    assert!(s.user_exists("alice").await.unwrap());
    assert!(!s.user_exists("Alice").await.unwrap(), "byte-exact names");
    assert_eq!(s.list_users().await.unwrap(), vec!["alice", "bob", "carol"]);

    assert!(s.delete_user("bob").await.unwrap());
    assert!(!s.delete_user("bob").await.unwrap());
    assert!(!s.user_exists("bob").await.unwrap());
    assert_eq!(s.list_users().await.unwrap(), vec!["alice", "carol"]);

    // A deleted user can be created again.
    assert!(s.create_user("bob", &creds(4)).await.unwrap());
    assert_eq!(s.credentials("bob").await.unwrap(), Some(creds(4)));
}

async fn credentials_round_trip(db: TestDb) {
    let s = db.open().await;
    let c = StoredCredentials {
        sha1: ScramSecret {
            salt: (0..=255).collect(),
            iterations: u32::MAX,
            stored_key: vec![0; 20],
            server_key: vec![0xff; 20],
        },
        sha256: ScramSecret {
            salt: vec![],
            iterations: 1,
            stored_key: vec![0x80; 32],
            server_key: vec![0x00, 0x01, 0x00],
        },
    };
    assert!(s.create_user("alice", &c).await.unwrap());
    assert_eq!(s.credentials("alice").await.unwrap(), Some(c.clone()));

    assert!(s.set_credentials("alice", &creds(7)).await.unwrap());
    assert_eq!(s.credentials("alice").await.unwrap(), Some(creds(7)));
    assert!(!s.set_credentials("nobody", &creds(7)).await.unwrap());
    assert!(!s.user_exists("nobody").await.unwrap());
}

async fn delete_user_removes_all_data(db: TestDb) {
    let s = db.open().await;
    for u in ["alice", "bob"] {
        assert!(s.create_user(u, &creds(1)).await.unwrap());
        s.put_roster_item(u, &item("carol@example.org"), ROSTER_MAX)
            .await
            .unwrap();
        s.inbox_append(u, &entry("m1", "<message/>", 1))
            .await
            .unwrap();
        s.set_vcard(u, "<vCard xmlns='vcard-temp'/>").await.unwrap();
        s.set_private_xml(u, "storage:bookmarks", "<storage/>")
            .await
            .unwrap();
        s.block(u, &["spam@example.net".to_string()]).await.unwrap();
        s.set_last_activity(u, 1_700_000_000, "gone").await.unwrap();
    }
    s.put_roster_item("bob", &item("alice@localhost"), ROSTER_MAX)
        .await
        .unwrap();

    assert!(s.delete_user("alice").await.unwrap());

    assert!(!s.user_exists("alice").await.unwrap());
    assert!(s.credentials("alice").await.unwrap().is_none());
    assert_eq!(s.roster("alice").await.unwrap(), (0, vec![]));
    assert_eq!(s.roster_version("alice").await.unwrap(), 0);
    assert_eq!(s.inbox_count("alice").await.unwrap(), 0);
    assert!(s.inbox_after("alice", 0, 100).await.unwrap().is_empty());
    assert!(s.vcard("alice").await.unwrap().is_none());
    assert!(
        s.private_xml("alice", "storage:bookmarks")
            .await
            .unwrap()
            .is_none()
    );
    assert!(s.blocklist("alice").await.unwrap().is_empty());
    assert!(s.last_activity("alice").await.unwrap().is_none());
    assert_eq!(
        s.roster_owners_of("carol@example.org").await.unwrap(),
        vec!["bob"]
    );

    // Bob's data is untouched, including his roster item naming alice.
    assert_eq!(s.roster("bob").await.unwrap().1.len(), 2);
    assert_eq!(s.inbox_count("bob").await.unwrap(), 1);
    assert!(s.vcard("bob").await.unwrap().is_some());
    assert!(
        s.private_xml("bob", "storage:bookmarks")
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(s.blocklist("bob").await.unwrap(), vec!["spam@example.net"]);
    assert!(s.last_activity("bob").await.unwrap().is_some());
    assert_eq!(
        s.roster_owners_of("alice@localhost").await.unwrap(),
        vec!["bob"]
    );

    // Re-created alice starts empty, inbox numbering from 1 again.
    assert!(s.create_user("alice", &creds(2)).await.unwrap());
    assert_eq!(s.roster("alice").await.unwrap(), (0, vec![]));
    assert_eq!(
        s.inbox_append("alice", &entry("m2", "<message/>", 2))
            .await
            .unwrap(),
        1
    );
}

async fn roster_versions_increase(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    assert_eq!(s.roster_version("alice").await.unwrap(), 0);
    assert_eq!(s.roster("alice").await.unwrap(), (0, vec![]));

    let v1 = s
        .put_roster_item("alice", &item("bob@localhost"), ROSTER_MAX)
        .await
        .unwrap();
    assert!(v1 > 0);
    let v2 = s
        .put_roster_item("alice", &item("carol@localhost"), ROSTER_MAX)
        .await
        .unwrap();
    assert!(v2 > v1);
    // Re-putting the same item is still a change.
    let v3 = s
        .put_roster_item("alice", &item("bob@localhost"), ROSTER_MAX)
        .await
        .unwrap();
    assert!(v3 > v2);
    let v4 = s
        .remove_roster_item("alice", "bob@localhost")
        .await
        .unwrap()
        .expect("removed");
    assert!(v4 > v3);
    // Removing nothing does not bump.
    assert_eq!(
        s.remove_roster_item("alice", "bob@localhost")
            .await
            .unwrap(),
        None
    );
    assert_eq!(s.roster_version("alice").await.unwrap(), v4);
    assert_eq!(s.roster("alice").await.unwrap().0, v4);

    // Versions are per user.
    s.create_user("bob", &creds(2)).await.unwrap();
    assert_eq!(s.roster_version("bob").await.unwrap(), 0);
    assert_eq!(s.roster_version("nobody").await.unwrap(), 0);
}

async fn roster_upsert_remove(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    assert!(
        s.roster_item("alice", "bob@localhost")
            .await
            .unwrap()
            .is_none()
    );

    let mut bob = RosterItem {
        contact: "bob@localhost".into(),
        name: Some("Bob".into()),
        subscription: Subscription::None,
        ask: true,
        pending_in: false,
        approved: false,
        groups: vec!["Friends".into()],
    };
    s.put_roster_item("alice", &bob, ROSTER_MAX).await.unwrap();
    s.put_roster_item("alice", &item("zed@remote.example"), ROSTER_MAX)
        .await
        .unwrap();
    s.put_roster_item("alice", &item("amy@remote.example"), ROSTER_MAX)
        .await
        .unwrap();
    assert_eq!(
        s.roster_item("alice", "bob@localhost").await.unwrap(),
        Some(bob.clone())
    );

    // Upsert: every field replaced.
    bob.name = None;
    bob.subscription = Subscription::Both;
    bob.ask = false;
    bob.pending_in = true;
    bob.approved = true;
    bob.groups = vec![];
    s.put_roster_item("alice", &bob, ROSTER_MAX).await.unwrap();
    assert_eq!(
        s.roster_item("alice", "bob@localhost").await.unwrap(),
        Some(bob.clone())
    );

    for sub in [
        Subscription::None,
        Subscription::To,
        Subscription::From,
        Subscription::Both,
    ] {
        let it = RosterItem {
            subscription: sub,
            ..item("sub@remote.example")
        };
        s.put_roster_item("alice", &it, ROSTER_MAX).await.unwrap();
        assert_eq!(
            s.roster_item("alice", "sub@remote.example")
                .await
                .unwrap()
                .unwrap()
                .subscription,
            sub
        );
    }

    let (_, items) = s.roster("alice").await.unwrap();
    let contacts: Vec<_> = items.iter().map(|i| i.contact.as_str()).collect();
    assert_eq!(
        contacts,
        vec![
            "amy@remote.example",
            "bob@localhost",
            "sub@remote.example",
            "zed@remote.example"
        ]
    );
    assert_eq!(items[1], bob);

    assert!(
        s.remove_roster_item("alice", "zed@remote.example")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        s.roster_item("alice", "zed@remote.example")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(s.roster("alice").await.unwrap().1.len(), 3);
}

async fn roster_groups_round_trip(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    let cases: Vec<Vec<String>> = vec![
        vec![],
        vec![String::new()],
        vec!["Friends".into(), "Work".into()],
        vec!["line\nbreak".into(), "back\\slash".into(), "\\n".into()],
        vec!["Друзья".into(), "家族 👪".into(), "x".into(), "x".into()],
    ];
    for (i, groups) in cases.into_iter().enumerate() {
        let contact = format!("c{i}@example.org");
        let it = RosterItem {
            groups: groups.clone(),
            ..item(&contact)
        };
        s.put_roster_item("alice", &it, ROSTER_MAX).await.unwrap();
        let back = s.roster_item("alice", &contact).await.unwrap().unwrap();
        assert_eq!(back.groups, groups);
    }
}

async fn roster_owners_of(db: TestDb) {
    let s = db.open().await;
    for u in ["carol", "alice", "bob"] {
        s.create_user(u, &creds(1)).await.unwrap();
    }
    s.put_roster_item("carol", &item("dave@localhost"), ROSTER_MAX)
        .await
        .unwrap();
    s.put_roster_item("alice", &item("dave@localhost"), ROSTER_MAX)
        .await
        .unwrap();
    s.put_roster_item("bob", &item("erin@localhost"), ROSTER_MAX)
        .await
        .unwrap();
    assert_eq!(
        s.roster_owners_of("dave@localhost").await.unwrap(),
        vec!["alice", "carol"]
    );
    assert_eq!(
        s.roster_owners_of("erin@localhost").await.unwrap(),
        vec!["bob"]
    );
    assert!(
        s.roster_owners_of("nobody@localhost")
            .await
            .unwrap()
            .is_empty()
    );
}

async fn a_full_roster_refuses_new_items_only(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    let cap = RosterCap {
        items: 3,
        requests: 2,
    };
    let full = |result: Result<i64, StoreError>, expected: usize| match result {
        Err(StoreError::RosterFull { owner, max }) => {
            assert_eq!((owner.as_str(), max), ("alice", expected))
        }
        other => panic!("expected RosterFull, got {other:?}"),
    };
    let request = |contact: &str| RosterItem {
        pending_in: true,
        ..item(contact)
    };
    for contact in ["a@x.org", "b@x.org", "c@x.org"] {
        s.put_roster_item("alice", &item(contact), cap)
            .await
            .unwrap();
    }
    let version = s.roster("alice").await.unwrap().0;
    full(s.put_roster_item("alice", &item("d@x.org"), cap).await, 3);
    // Nothing written, the version unchanged.
    let (after, items) = s.roster("alice").await.unwrap();
    assert_eq!(after, version);
    assert_eq!(items.len(), 3);
    // Unanswered requests are counted apart: the contacts leave them room,
    // and they leave the contacts theirs.
    s.put_roster_item("alice", &request("r1@x.org"), cap)
        .await
        .unwrap();
    s.put_roster_item("alice", &request("r2@x.org"), cap)
        .await
        .unwrap();
    full(
        s.put_roster_item("alice", &request("r3@x.org"), cap).await,
        2,
    );
    // An existing item can still change (a request answered included), and a
    // removal makes room.
    let mut renamed = item("b@x.org");
    renamed.name = Some("Bee".into());
    s.put_roster_item("alice", &renamed, cap).await.unwrap();
    assert_eq!(
        s.roster_item("alice", "b@x.org")
            .await
            .unwrap()
            .unwrap()
            .name
            .as_deref(),
        Some("Bee")
    );
    let answered = RosterItem {
        subscription: Subscription::From,
        ..item("r1@x.org")
    };
    s.put_roster_item("alice", &answered, cap).await.unwrap();
    s.put_roster_item("alice", &request("r3@x.org"), cap)
        .await
        .unwrap();
    s.remove_roster_item("alice", "a@x.org")
        .await
        .unwrap()
        .unwrap();
    s.remove_roster_item("alice", "b@x.org")
        .await
        .unwrap()
        .unwrap();
    s.put_roster_item("alice", &item("d@x.org"), cap)
        .await
        .unwrap();
    let contacts: Vec<String> = s
        .roster("alice")
        .await
        .unwrap()
        .1
        .into_iter()
        .map(|i| i.contact)
        .collect();
    assert_eq!(
        contacts,
        ["c@x.org", "d@x.org", "r1@x.org", "r2@x.org", "r3@x.org"]
    );
}

async fn unknown_owner_writes_fail(db: TestDb) {
    let s = db.open().await;
    let no = |r: Result<(), StoreError>| match r {
        Err(StoreError::NoSuchUser(u)) => assert_eq!(u, "ghost"),
        other => panic!("expected NoSuchUser, got {other:?}"),
    };
    no(s.put_roster_item("ghost", &item("a@b"), ROSTER_MAX)
        .await
        .map(drop));
    no(s.inbox_append("ghost", &entry("1", "<m/>", 1))
        .await
        .map(drop));
    no(s.set_vcard("ghost", "<vCard/>").await);
    no(s.set_private_xml("ghost", "ns", "<x/>").await);
    no(s.block("ghost", &["x@y".to_string()]).await);
    no(s.set_last_activity("ghost", 1, "").await);
    // Reads of an unknown owner are simply empty.
    assert_eq!(s.roster("ghost").await.unwrap(), (0, vec![]));
    assert_eq!(s.inbox_count("ghost").await.unwrap(), 0);
    assert!(s.vcard("ghost").await.unwrap().is_none());
    assert!(s.blocklist("ghost").await.unwrap().is_empty());
    assert!(!s.is_blocked("ghost", "x@y").await.unwrap());
    assert!(s.last_activity("ghost").await.unwrap().is_none());
    assert_eq!(s.remove_roster_item("ghost", "a@b").await.unwrap(), None);
    s.unblock("ghost", &[]).await.unwrap();
    assert_eq!(s.inbox_remove_through("ghost", 10).await.unwrap(), 0);
    assert!(!s.delete_user("ghost").await.unwrap());
    // The failed writes created nothing.
    assert!(s.list_users().await.unwrap().is_empty());
}

async fn inbox_seq_strictly_increasing(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    s.create_user("bob", &creds(2)).await.unwrap();
    assert_eq!(s.inbox_count("alice").await.unwrap(), 0);

    let mut seqs = vec![];
    for i in 0..5 {
        let id = format!("m{i}");
        seqs.push(
            s.inbox_append("alice", &entry(&id, "<message/>", 1000 + i))
                .await
                .unwrap(),
        );
    }
    assert_eq!(seqs, vec![1, 2, 3, 4, 5]);
    // Per owner: bob starts at 1.
    assert_eq!(
        s.inbox_append("bob", &entry("b", "<message/>", 1))
            .await
            .unwrap(),
        1
    );
    assert_eq!(s.inbox_count("alice").await.unwrap(), 5);

    assert_eq!(s.inbox_remove_through("alice", 3).await.unwrap(), 3);
    assert_eq!(s.inbox_count("alice").await.unwrap(), 2);
    assert_eq!(s.inbox_remove_through("alice", 3).await.unwrap(), 0);
    // Numbers are never reused, even once everything is removed.
    assert_eq!(s.inbox_remove_through("alice", 5).await.unwrap(), 2);
    assert_eq!(s.inbox_count("alice").await.unwrap(), 0);
    assert_eq!(
        s.inbox_append("alice", &entry("m5", "<message/>", 2000))
            .await
            .unwrap(),
        6
    );
    // …and survive a restart.
    s.close().await;
    let s = db.open().await;
    assert_eq!(
        s.inbox_append("alice", &entry("m6", "<message/>", 2001))
            .await
            .unwrap(),
        7
    );
    let left = s.inbox_after("alice", 0, 10).await.unwrap();
    assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![6, 7]);
    assert_eq!(s.inbox_count("bob").await.unwrap(), 1);
}

async fn inbox_after_paging(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    for i in 1..=25_i64 {
        let id = format!("id-{i}");
        let xml = format!("<message id='id-{i}'><body>{i}</body></message>");
        let seq = s
            .inbox_append(
                "alice",
                &NewInboxEntry {
                    peer: "bob@example.org",
                    direction: "in",
                    body: None,
                    origin: None,
                    stanza_id: &id,
                    sender: "bob@localhost/x",
                    kind: if i % 2 == 0 { "chat" } else { "receipt" },
                    xml: &xml,
                    at_micros: 1_700_000_000_000_000 + i,
                },
            )
            .await
            .unwrap();
        assert_eq!(seq, i);
    }
    let mut cursor = 0;
    let mut all = vec![];
    loop {
        let page = s.inbox_after("alice", cursor, 10).await.unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 10);
        cursor = page.last().unwrap().seq;
        all.extend(page);
    }
    assert_eq!(all.len(), 25);
    for (i, e) in all.iter().enumerate() {
        let n = i as i64 + 1;
        assert_eq!(e.seq, n);
        assert_eq!(e.stanza_id, format!("id-{n}"));
        assert_eq!(e.sender, "bob@localhost/x");
        assert_eq!(e.kind, if n % 2 == 0 { "chat" } else { "receipt" });
        assert_eq!(
            e.xml,
            format!("<message id='id-{n}'><body>{n}</body></message>")
        );
        assert_eq!(e.at_micros, 1_700_000_000_000_000 + n);
    }
    assert_eq!(
        s.inbox_after("alice", 20, 100)
            .await
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect::<Vec<_>>(),
        vec![21, 22, 23, 24, 25]
    );
    assert!(s.inbox_after("alice", 25, 10).await.unwrap().is_empty());
    assert!(s.inbox_after("alice", 0, 0).await.unwrap().is_empty());
    assert!(s.inbox_after("alice", 0, -1).await.unwrap().is_empty());
    // After removal, paging from 0 starts at the first survivor.
    s.inbox_remove_through("alice", 12).await.unwrap();
    assert_eq!(s.inbox_after("alice", 0, 1).await.unwrap()[0].seq, 13);
}

async fn inbox_concurrent_appends(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    let mut tasks = vec![];
    for t in 0..4 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = vec![];
            for i in 0..25 {
                let id = format!("{t}-{i}");
                got.push(
                    s.inbox_append("alice", &entry(&id, "<message/>", i))
                        .await
                        .unwrap(),
                );
            }
            // Each task sees its own appends in increasing order.
            assert!(got.windows(2).all(|w| w[0] < w[1]));
            got
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all.sort_unstable();
    assert_eq!(all, (1..=100).collect::<Vec<i64>>());
    assert_eq!(s.inbox_count("alice").await.unwrap(), 100);
}

/// A cluster's nodes each run a writer on one PostgreSQL database, and their
/// batches number entries of, and move the delivered marks of, the same users
/// at once. Each batch locks those rows in one order first: no two batches
/// ever wait on each other (PostgreSQL would break that after a second by
/// failing one, and count it: `pg_stat_database.deadlocks`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_on_one_database_never_deadlock() {
    run_postgres(|db: TestDb| async move {
        let raw = db.raw().await;
        let (a, b) = (db.open().await, db.open().await);
        let users: Vec<String> = (0..40).map(|n| format!("u{n:02}")).collect();
        for user in &users {
            assert!(a.create_user(user, &creds(1)).await.unwrap());
        }
        for round in 0..8 {
            let mut tasks = Vec::new();
            for (writer, store) in [a.clone(), b.clone()].into_iter().enumerate() {
                // The two writers take the users in opposite orders, each
                // append a job of its own so that a batch holds many owners.
                let mut order = users.clone();
                if writer == 1 {
                    order.reverse();
                }
                for user in order {
                    let store = store.clone();
                    tasks.push(tokio::spawn(async move {
                        let id = format!("{round}-{writer}-{user}");
                        let seq = store
                            .inbox_append(&user, &entry(&id, "<message/>", round))
                            .await
                            .unwrap();
                        store
                            .device_ack(&user, &format!("phone{writer}"), seq, round)
                            .await
                            .unwrap();
                    }));
                }
            }
            for task in tasks {
                task.await.unwrap();
            }
        }
        for user in &users {
            assert_eq!(a.inbox_count(user).await.unwrap(), 16, "{user}");
        }
        // A backend's statistics are flushed when it exits at the latest.
        a.close().await;
        b.close().await;
        let others = "SELECT count(*) FROM pg_stat_activity \
                      WHERE datname = current_database() AND pid <> pg_backend_pid()";
        for _ in 0..100 {
            let left: i64 = sqlx::query_scalar(others).fetch_one(&raw).await.unwrap();
            if left == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&raw)
            .await
            .unwrap();
        let deadlocks: i64 = sqlx::query_scalar(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&raw)
        .await
        .unwrap();
        assert_eq!(deadlocks, 0, "the two writers deadlocked");
    })
    .await;
}

async fn blocklist(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    let j = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert!(s.blocklist("alice").await.unwrap().is_empty());
    s.block("alice", &[]).await.unwrap();

    s.block("alice", &j(&["zed@x.org", "amy@x.org"]))
        .await
        .unwrap();
    // Idempotent, including duplicates inside one call.
    s.block("alice", &j(&["amy@x.org", "amy@x.org", "bob@x.org/res"]))
        .await
        .unwrap();
    assert_eq!(
        s.blocklist("alice").await.unwrap(),
        vec!["amy@x.org", "bob@x.org/res", "zed@x.org"]
    );
    assert!(s.is_blocked("alice", "amy@x.org").await.unwrap());
    assert!(!s.is_blocked("alice", "bob@x.org").await.unwrap());
    assert!(s.is_blocked("alice", "bob@x.org/res").await.unwrap());

    s.unblock("alice", &j(&["amy@x.org", "never@x.org"]))
        .await
        .unwrap();
    assert!(!s.is_blocked("alice", "amy@x.org").await.unwrap());
    assert_eq!(s.blocklist("alice").await.unwrap().len(), 2);

    // Per owner.
    s.create_user("bob", &creds(2)).await.unwrap();
    s.block("bob", &j(&["zed@x.org"])).await.unwrap();

    // Empty slice: unblock everything (of this owner only).
    s.unblock("alice", &[]).await.unwrap();
    assert!(s.blocklist("alice").await.unwrap().is_empty());
    assert_eq!(s.blocklist("bob").await.unwrap(), vec!["zed@x.org"]);
}

async fn vcard_and_private_overwrite(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    assert!(s.vcard("alice").await.unwrap().is_none());
    s.set_vcard("alice", "<vCard xmlns='vcard-temp'><FN>A</FN></vCard>")
        .await
        .unwrap();
    s.set_vcard("alice", "<vCard xmlns='vcard-temp'><FN>B</FN></vCard>")
        .await
        .unwrap();
    assert_eq!(
        s.vcard("alice").await.unwrap().as_deref(),
        Some("<vCard xmlns='vcard-temp'><FN>B</FN></vCard>")
    );
    s.set_vcard("alice", "").await.unwrap();
    assert_eq!(s.vcard("alice").await.unwrap().as_deref(), Some(""));

    let ns1 = "storage:bookmarks";
    let ns2 = "urn:example:prefs";
    assert!(s.private_xml("alice", ns1).await.unwrap().is_none());
    s.set_private_xml("alice", ns1, "<storage xmlns='storage:bookmarks'/>")
        .await
        .unwrap();
    s.set_private_xml("alice", ns2, "<prefs xmlns='urn:example:prefs'/>")
        .await
        .unwrap();
    s.set_private_xml(
        "alice",
        ns1,
        "<storage xmlns='storage:bookmarks'><c/></storage>",
    )
    .await
    .unwrap();
    assert_eq!(
        s.private_xml("alice", ns1).await.unwrap().as_deref(),
        Some("<storage xmlns='storage:bookmarks'><c/></storage>")
    );
    assert_eq!(
        s.private_xml("alice", ns2).await.unwrap().as_deref(),
        Some("<prefs xmlns='urn:example:prefs'/>")
    );
    assert!(s.private_xml("alice", "other").await.unwrap().is_none());
}

async fn last_activity(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    assert!(s.last_activity("alice").await.unwrap().is_none());
    s.set_last_activity("alice", 1_700_000_000, "Heading home")
        .await
        .unwrap();
    assert_eq!(
        s.last_activity("alice").await.unwrap(),
        Some((1_700_000_000, "Heading home".to_string()))
    );
    s.set_last_activity("alice", 1_800_000_000, "")
        .await
        .unwrap();
    assert_eq!(
        s.last_activity("alice").await.unwrap(),
        Some((1_800_000_000, String::new()))
    );
}

async fn unicode_and_large_values(db: TestDb) {
    let s = db.open().await;
    let user = "аліса"; // already-normalised non-ASCII localpart
    s.create_user(user, &creds(1)).await.unwrap();
    assert_eq!(s.list_users().await.unwrap(), vec![user]);

    let unicode =
        "<vCard xmlns='vcard-temp'><FN>Zoë 山田 👩‍🚀 \u{202e}ltr</FN><NOTE>'\"&amp;\\</NOTE></vCard>";
    s.set_vcard(user, unicode).await.unwrap();
    assert_eq!(s.vcard(user).await.unwrap().as_deref(), Some(unicode));

    // ~100 KB of mixed multi-byte text.
    let big = "<p>héllo wörld — 你好 🌍</p>\n".repeat(3500);
    assert!(big.len() > 100_000, "{}", big.len());
    s.set_vcard(user, &big).await.unwrap();
    assert_eq!(s.vcard(user).await.unwrap().as_deref(), Some(big.as_str()));
    s.set_private_xml(user, "urn:x:ü", &big).await.unwrap();
    assert_eq!(
        s.private_xml(user, "urn:x:ü").await.unwrap().as_deref(),
        Some(big.as_str())
    );
    let seq = s
        .inbox_append(
            user,
            &NewInboxEntry {
                peer: "bob@example.org",
                direction: "in",
                body: None,
                origin: None,
                stanza_id: "ид-1",
                sender: "björn@exämple.org/📱",
                kind: "chat",
                xml: &big,
                at_micros: i64::MAX,
            },
        )
        .await
        .unwrap();
    let e = &s.inbox_after(user, seq - 1, 1).await.unwrap()[0];
    assert_eq!(e.xml, big);
    assert_eq!(e.sender, "björn@exämple.org/📱");
    assert_eq!(e.stanza_id, "ид-1");
    assert_eq!(e.at_micros, i64::MAX);

    let it = RosterItem {
        contact: "ɓob@例え.jp".into(),
        name: Some("Bøb 🐝".into()),
        groups: vec!["Família".into()],
        ..RosterItem::default()
    };
    s.put_roster_item(user, &it, ROSTER_MAX).await.unwrap();
    assert_eq!(s.roster_item(user, &it.contact).await.unwrap(), Some(it));
    s.block(user, &["spæm@例え.jp".to_string()]).await.unwrap();
    assert!(s.is_blocked(user, "spæm@例え.jp").await.unwrap());
    s.set_last_activity(user, -1, "😴").await.unwrap();
    assert_eq!(
        s.last_activity(user).await.unwrap(),
        Some((-1, "😴".to_string()))
    );
    assert!(s.delete_user(user).await.unwrap());
}

async fn roster_concurrent_writes(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    let mut tasks = vec![];
    for t in 0..4 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut versions = vec![];
            for i in 0..15 {
                // Everyone fights over the same item, plus one of their own.
                versions.push(
                    s.put_roster_item("alice", &item("shared@x.org"), ROSTER_MAX)
                        .await
                        .unwrap(),
                );
                let own = format!("t{t}-{i}@x.org");
                versions.push(
                    s.put_roster_item("alice", &item(&own), ROSTER_MAX)
                        .await
                        .unwrap(),
                );
                if let Some(v) = s.remove_roster_item("alice", "shared@x.org").await.unwrap() {
                    versions.push(v);
                }
                versions.push(
                    s.remove_roster_item("alice", &own)
                        .await
                        .unwrap()
                        .expect("own item present"),
                );
            }
            versions
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let n = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), n, "every change got its own version");
    assert_eq!(all, (1..=n as i64).collect::<Vec<_>>());
    assert_eq!(s.roster_version("alice").await.unwrap(), n as i64);
    let (v, items) = s.roster("alice").await.unwrap();
    assert_eq!(v, n as i64);
    assert!(items.len() <= 1);
}

async fn inbox_entry_metadata_round_trip(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    let seq = s
        .inbox_append(
            "alice",
            &NewInboxEntry {
                peer: "bob@localhost",
                direction: "out",
                body: Some("héllo wörld"),
                origin: None,
                stanza_id: "s1",
                sender: "alice@localhost/phone",
                kind: "chat",
                xml: "<message/>",
                at_micros: 7,
            },
        )
        .await
        .unwrap();
    let e = &s.inbox_after("alice", seq - 1, 1).await.unwrap()[0];
    assert_eq!(e.peer, "bob@localhost");
    assert_eq!(e.direction, "out");
    assert_eq!(e.body.as_deref(), Some("héllo wörld"));
    assert_eq!(s.inbox_head("alice").await.unwrap(), seq);
    assert_eq!(s.inbox_head("nobody").await.unwrap(), 0);
}

async fn devices_start_at_the_delivered_mark(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    for i in 0..5 {
        s.inbox_append("alice", &entry(&format!("m{i}"), "<message/>", i))
            .await
            .unwrap();
    }
    // The first device ever gets everything nobody has received.
    let phone = s.device_attach("alice", "phone", 1).await.unwrap();
    assert_eq!(phone.cursor, 0);
    s.device_ack("alice", "phone", 5, 2).await.unwrap();
    assert_eq!(s.device_cursor("alice", "phone").await.unwrap(), Some(5));
    // Cursors never move backwards.
    s.device_ack("alice", "phone", 3, 3).await.unwrap();
    assert_eq!(s.device_cursor("alice", "phone").await.unwrap(), Some(5));
    // A known device resumes from its own cursor.
    let again = s.device_attach("alice", "phone", 4).await.unwrap();
    assert_eq!(again.cursor, 5);
    // A new device starts where delivery has reached, not at the start of history.
    s.inbox_append("alice", &entry("m5", "<message/>", 5))
        .await
        .unwrap();
    let laptop = s.device_attach("alice", "laptop", 5).await.unwrap();
    assert_eq!(laptop.cursor, 5);
    // Idle devices are forgotten; deleting the user removes its devices.
    assert_eq!(s.forget_idle_devices(5).await.unwrap(), 1);
    assert_eq!(s.device_cursor("alice", "phone").await.unwrap(), None);
    assert!(s.device_attach("nobody", "x", 1).await.is_err());
    s.delete_user("alice").await.unwrap();
    assert_eq!(s.device_cursor("alice", "laptop").await.unwrap(), None);
}

/// Retention may delete an owner's newest entries; the numbers they had are
/// still never handed out again, also after a restart (the SQLite writer keeps
/// log heads in memory and loads them from the database).
async fn retention_never_lets_numbers_be_reused(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    s.create_user("bob", &creds(2)).await.unwrap();
    for i in 0..3 {
        s.inbox_append("alice", &entry(&format!("a{i}"), "<message/>", 100 + i))
            .await
            .unwrap();
    }
    s.inbox_append("bob", &entry("b0", "<message/>", 100))
        .await
        .unwrap();
    s.device_attach("bob", "phone", 1).await.unwrap();
    s.device_ack("bob", "phone", 1, 2).await.unwrap();
    // Everything of alice's is old; bob's one entry is delivered.
    assert_eq!(s.inbox_delete_before(1_000).await.unwrap(), 4);
    assert_eq!(s.inbox_head("alice").await.unwrap(), 3);
    assert_eq!(s.inbox_head("bob").await.unwrap(), 1);
    s.close().await;
    let s = db.open().await;
    assert_eq!(s.inbox_head("alice").await.unwrap(), 3);
    assert_eq!(
        s.inbox_append("alice", &entry("a3", "<message/>", 2_000))
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        s.inbox_append("bob", &entry("b1", "<message/>", 2_000))
            .await
            .unwrap(),
        2
    );
    // Delivered-only retention, then a restart: bob's phone has seq 2 now.
    s.device_ack("bob", "phone", 2, 3).await.unwrap();
    assert_eq!(s.inbox_delete_delivered().await.unwrap(), 1);
    s.close().await;
    let s = db.open().await;
    assert_eq!(
        s.inbox_append("bob", &entry("b2", "<message/>", 3_000))
            .await
            .unwrap(),
        3
    );
    let owed = s.inbox_after("bob", 2, 10).await.unwrap();
    assert_eq!(owed.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3]);
}

async fn retention_deletes_old_and_delivered_entries(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    s.create_user("bob", &creds(2)).await.unwrap();
    for i in 0..4 {
        s.inbox_append("alice", &entry(&format!("a{i}"), "<message/>", 100 + i))
            .await
            .unwrap();
        s.inbox_append("bob", &entry(&format!("b{i}"), "<message/>", 100 + i))
            .await
            .unwrap();
    }
    // Time-based: entries before 102 go.
    assert_eq!(s.inbox_delete_before(102).await.unwrap(), 4);
    // Until delivered: alice's two devices have 3 and 4; bob has no device.
    s.device_attach("alice", "phone", 1).await.unwrap();
    s.device_attach("alice", "laptop", 1).await.unwrap();
    s.device_ack("alice", "phone", 4, 2).await.unwrap();
    s.device_ack("alice", "laptop", 3, 2).await.unwrap();
    assert_eq!(s.inbox_delete_delivered().await.unwrap(), 1);
    let left: Vec<i64> = s
        .inbox_after("alice", 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(left, vec![4]);
    assert_eq!(s.inbox_count("bob").await.unwrap(), 2);
}

/// The sweep deletes in chunks (about a thousand rows per transaction): a log of
/// 5,000 entries is cut at exactly the right entry either way.
async fn retention_sweeps_long_logs_in_chunks(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    s.create_user("bob", &creds(2)).await.unwrap();
    // In order (1,000 + i at number i + 1), a hundred per append.
    let ids: Vec<String> = (0..5000).map(|i| format!("a{i}")).collect();
    for (c, chunk) in ids.chunks(100).enumerate() {
        let entries: Vec<(&str, NewInboxEntry<'_>)> = chunk
            .iter()
            .enumerate()
            .map(|(k, id)| {
                (
                    "alice",
                    entry(id, "<message/>", 1_000 + (c * 100 + k) as i64),
                )
            })
            .collect();
        for result in s.inbox_append_all(&entries).await.unwrap() {
            result.unwrap();
        }
    }
    s.inbox_append("bob", &entry("b0", "<message/>", 9_000))
        .await
        .unwrap();
    // Time-based: the 4,500 entries before 5,500 go, in several chunks; bob's
    // newer entry stays.
    assert_eq!(s.inbox_delete_before(5_500).await.unwrap(), 4_500);
    assert_eq!(s.inbox_count("alice").await.unwrap(), 500);
    assert_eq!(s.inbox_count("bob").await.unwrap(), 1);
    let first = s.inbox_after("alice", 0, 1).await.unwrap();
    assert_eq!(
        first.first().map(|e| (e.seq, e.at_micros)),
        Some((4_501, 5_500))
    );
    // Until delivered: alice's only device has 4,750 of 5,000.
    s.device_attach("alice", "phone", 1).await.unwrap();
    s.device_ack("alice", "phone", 4_750, 2).await.unwrap();
    assert_eq!(s.inbox_delete_delivered().await.unwrap(), 250);
    let left: Vec<i64> = s
        .inbox_after("alice", 0, 1_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(left, (4_751..=5_000).collect::<Vec<_>>());
    // Nothing is numbered twice afterwards.
    assert_eq!(
        s.inbox_append("alice", &entry("a-new", "<message/>", 9_500))
            .await
            .unwrap(),
        5_001
    );
}

async fn group_commit_isolates_unknown_owners(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    s.create_user("bob", &creds(2)).await.unwrap();
    // Many appends at once share commits; an unknown owner fails alone.
    let mut tasks = Vec::new();
    for i in 0..300 {
        let s = s.clone();
        let owner = match i % 3 {
            0 => "alice",
            1 => "bob",
            _ => "nobody",
        };
        tasks.push(tokio::spawn(async move {
            let id = format!("g{i}");
            (
                owner,
                s.inbox_append(owner, &entry(&id, "<message/>", i)).await,
            )
        }));
    }
    let mut ok = 0;
    for task in tasks {
        let (owner, result) = task.await.unwrap();
        match owner {
            "nobody" => assert!(matches!(result, Err(StoreError::NoSuchUser(_)))),
            _ => {
                result.unwrap();
                ok += 1;
            }
        }
    }
    assert_eq!(ok, 200);
    let seqs: Vec<i64> = s
        .inbox_after("alice", 0, 1000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (1..=100).collect::<Vec<_>>());
}

async fn entries_can_be_rewritten_as_tombstones(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    for i in 0..3 {
        s.inbox_append(
            "alice",
            &NewInboxEntry {
                peer: if i == 1 {
                    "carol@localhost"
                } else {
                    "bob@localhost"
                },
                direction: "in",
                body: Some("secret words"),
                origin: None,
                stanza_id: &format!("t{i}"),
                sender: "bob@localhost/x",
                kind: "message",
                xml: "<message/>",
                at_micros: i,
            },
        )
        .await
        .unwrap();
    }
    // An entry kept for delivery only (no archive id) is not the archive's.
    s.inbox_append(
        "alice",
        &NewInboxEntry {
            peer: "bob@localhost",
            direction: "in",
            body: None,
            origin: None,
            stanza_id: "",
            sender: "bob@localhost/x",
            kind: "message",
            xml: "<message/>",
            at_micros: 9,
        },
    )
    .await
    .unwrap();
    let recent = s
        .inbox_recent_with("alice", "bob@localhost", "in", 10)
        .await
        .unwrap();
    assert_eq!(recent.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 1]);
    assert!(
        s.inbox_rewrite("alice", 3, "<message><retracted/></message>", None)
            .await
            .unwrap()
    );
    assert!(!s.inbox_rewrite("alice", 99, "<x/>", None).await.unwrap());
    let e = &s.inbox_after("alice", 2, 1).await.unwrap()[0];
    assert_eq!(
        (e.xml.as_str(), e.body.as_deref()),
        ("<message><retracted/></message>", None)
    );
}

async fn duplicate_origin_keys_are_stored_once(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    s.create_user("bob", &creds(2)).await.unwrap();
    let first = s
        .inbox_append("alice", &with_origin("a", "bob\no1"))
        .await
        .unwrap();
    // The same key again, alone and inside a batch with a new one.
    assert!(matches!(
        s.inbox_append("alice", &with_origin("b", "bob\no1")).await,
        Err(StoreError::Duplicate(owner)) if owner == "alice"
    ));
    let results = s
        .inbox_append_all(&[
            ("alice", with_origin("c", "bob\no1")),
            ("alice", with_origin("d", "bob\no2")),
            // The same key in another owner's log is no duplicate.
            ("bob", with_origin("e", "bob\no1")),
            // Twice in one batch: the first wins.
            ("alice", with_origin("f", "bob\no3")),
            ("alice", with_origin("g", "bob\no3")),
        ])
        .await
        .unwrap();
    assert!(matches!(results[0], Err(StoreError::Duplicate(_))));
    let second = *results[1].as_ref().unwrap();
    assert!(second > first);
    assert!(results[2].is_ok());
    assert!(results[3].is_ok());
    assert!(matches!(results[4], Err(StoreError::Duplicate(_))));
    // Entries without a key are never duplicates.
    s.inbox_append("alice", &entry("h", "<message/>", 2))
        .await
        .unwrap();
    s.inbox_append("alice", &entry("h", "<message/>", 2))
        .await
        .unwrap();
    let ids: Vec<String> = s
        .inbox_after("alice", 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.stanza_id)
        .collect();
    assert_eq!(ids, ["a", "d", "f", "h", "h"]);
}

async fn append_then_runs_in_commit_order(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..200 {
        let seen = seen.clone();
        let done = done_tx.clone();
        let id = format!("m{i}");
        s.inbox_append_then(&[("alice", entry(&id, "<message/>", i))], move |results| {
            let seq = *results[0].as_ref().unwrap();
            seen.lock().unwrap().push((i, seq));
            let _ = done.send(());
        })
        .await
        .unwrap();
    }
    for _ in 0..200 {
        done_rx.recv().await.unwrap();
    }
    let seen = seen.lock().unwrap().clone();
    // Called in the order queued, with increasing sequence numbers.
    assert_eq!(
        seen.iter().map(|(i, _)| *i).collect::<Vec<i64>>(),
        (0..200).collect::<Vec<_>>()
    );
    assert!(seen.windows(2).all(|w| w[0].1 < w[1].1));
    assert_eq!(s.inbox_count("alice").await.unwrap(), 200);
}

/// Under a steady stream of commits the SQLite WAL file stays bounded: the
/// log starts over once it is long. (A passive checkpoint alone never reaches
/// the end of a log that keeps growing, SQLite then never starts it over, and
/// the file grew by gigabytes in the chat benchmark.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_wal_stays_bounded_under_steady_commits() {
    run_sqlite(|db: TestDb| async move {
        let s = db.open().await;
        s.create_user("alice", &creds(1)).await.unwrap();
        let wal = format!("{}-wal", db.sqlite_file().display());
        let wal_len = || std::fs::metadata(&wal).map_or(0, |m| m.len());
        // 20,000 entries of 16 KiB, one commit each: ≈ 330 MiB through the log.
        const ENTRIES: i64 = 20_000;
        let xml = format!("<message>{}</message>", "x".repeat(16 * 1024));
        let mut largest = 0;
        for i in 0..ENTRIES {
            s.inbox_append("alice", &entry(&format!("id{i}"), &xml, i))
                .await
                .unwrap();
            if i % 100 == 0 {
                largest = largest.max(wal_len());
            }
        }
        // A restart is due from 128 MiB on; how far the log gets past that
        // depends on the write rate and on how busy the core is (the
        // checkpointer looks every 500 ms; the writer steps in past 512 MiB):
        // 139 MiB here (60-220 MiB when restarts were due from 32 MiB). Without restarts the WAL held 2.7 times what was
        // written (838 MiB).
        let written = ENTRIES as u64 * 16 * 1024;
        assert!(
            largest < written,
            "the WAL grew to {} MiB for {} MiB written",
            largest >> 20,
            written >> 20
        );
        assert_eq!(s.inbox_head("alice").await.unwrap(), ENTRIES);
    })
    .await;
}

/// A login storm: device registrations queued together share the writer's
/// commits, an unknown owner among them fails alone, and every login's reads
/// (on SQLite, on the caller's thread) see what was committed before them.
async fn logins_in_a_storm_read_their_writes(db: TestDb) {
    let s = db.open().await;
    for i in 0..24u8 {
        s.create_user(&format!("u{i}"), &creds(i)).await.unwrap();
        s.inbox_append(&format!("u{i}"), &entry(&format!("m{i}"), "<message/>", 1))
            .await
            .unwrap();
    }
    let mut tasks = vec![];
    for i in 0..24u8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let user = format!("u{i}");
            let start = s.device_attach(&user, "phone", 10).await.unwrap();
            // Nobody had anything delivered: the whole log is owed.
            assert_eq!(start.cursor, 0);
            assert!(!start.in_rooms);
            let backlog = s.inbox_after(&user, start.cursor, 500).await.unwrap();
            assert_eq!(backlog.len(), 1);
            assert_eq!(backlog[0].stanza_id, format!("m{i}"));
            s.device_ack(&user, "phone", backlog[0].seq, 11)
                .await
                .unwrap();
            let version = s
                .put_roster_item(&user, &item("friend@x.org"), ROSTER_MAX)
                .await
                .unwrap();
            let (read_version, items) = s.roster(&user).await.unwrap();
            assert_eq!(read_version, version);
            assert_eq!(items.len(), 1);
            assert_eq!(s.credentials(&user).await.unwrap(), Some(creds(i)));
            // Logging in again resumes after what was acknowledged.
            let again = s.device_attach(&user, "phone", 12).await.unwrap();
            assert_eq!(again.cursor, backlog[0].seq);
            assert!(
                s.inbox_after(&user, again.cursor, 500)
                    .await
                    .unwrap()
                    .is_empty()
            );
            // And the logout's last activity, twice: the later one stays.
            s.set_last_activity(&user, 100 + i64::from(i), "bye")
                .await
                .unwrap();
            s.set_last_activity(&user, 200 + i64::from(i), &format!("gone {i}"))
                .await
                .unwrap();
            assert_eq!(
                s.last_activity(&user).await.unwrap(),
                Some((200 + i64::from(i), format!("gone {i}")))
            );
        }));
    }
    let nobody = {
        let s = s.clone();
        tokio::spawn(async move { s.device_attach("nobody", "phone", 10).await })
    };
    let nobody_seen = {
        let s = s.clone();
        tokio::spawn(async move { s.set_last_activity("nobody", 1, "").await })
    };
    for t in tasks {
        t.await.unwrap();
    }
    assert!(matches!(
        nobody.await.unwrap(),
        Err(StoreError::NoSuchUser(owner)) if owner == "nobody"
    ));
    assert!(matches!(
        nobody_seen.await.unwrap(),
        Err(StoreError::NoSuchUser(owner)) if owner == "nobody"
    ));
    assert_eq!(s.last_activity("nobody").await.unwrap(), None);
    assert_eq!(s.credentials("nobody").await.unwrap(), None);
    assert_eq!(s.roster("nobody").await.unwrap(), (0, vec![]));
}

/// After `close`, every clone fails reads, the short ones included.
async fn a_closed_store_refuses_reads(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    let other = s.clone();
    assert!(other.credentials("alice").await.unwrap().is_some());
    s.close().await;
    assert!(other.credentials("alice").await.is_err());
    assert!(other.roster("alice").await.is_err());
    assert!(other.inbox_after("alice", 0, 10).await.is_err());
}

// ----------------------------------------------------------------------
// the log's tail (SQLite, retention "until delivered")
// ----------------------------------------------------------------------

/// An entry with XEP-0359 origin key `origin`.
fn with_origin(id: &'static str, origin: &'static str) -> NewInboxEntry<'static> {
    NewInboxEntry {
        origin: Some(origin),
        ..entry(id, "<message/>", 1)
    }
}

/// The sequence numbers of `owner`'s entries past `after`.
async fn seqs_after(s: &Store, owner: &str, after: i64) -> Vec<i64> {
    s.inbox_after(owner, after, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect()
}

/// Accounts for `users`.
async fn create_users(s: &Store, users: [&str; 3]) {
    for (i, user) in users.into_iter().enumerate() {
        s.create_user(user, &creds(i as u8)).await.unwrap();
    }
}

/// Three entries each for `users`, interleaved as a chat's are (`alice0`,
/// `bob0`, …, at times 100, 101, 102).
async fn append_in_turn(s: &Store, users: [&str; 3]) {
    for i in 0..3 {
        for user in users {
            s.inbox_append(user, &entry(&format!("{user}{i}"), "<message/>", 100 + i))
                .await
                .unwrap();
        }
    }
}

/// The archive ids (here: test labels) of `owner`'s entries.
async fn ids_of(s: &Store, owner: &str) -> Vec<String> {
    s.inbox_after(owner, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.stanza_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tail_drops_what_every_device_has_and_moves_the_rest() {
    run_sqlite_tail(|db: TestDb| async move {
        let s = db.open().await;
        let raw = db.raw().await;
        create_users(&s, ["alice", "bob", "carol"]).await;
        s.device_attach("alice", "phone", 1).await.unwrap();
        s.device_attach("carol", "phone", 1).await.unwrap();
        s.device_attach("carol", "laptop", 1).await.unwrap();
        append_in_turn(&s, ["alice", "bob", "carol"]).await;
        // Appended to the tail, not to the indexed log.
        assert_eq!(in_tail(&db).await, 9);
        assert!(in_log(&raw).await.is_empty());
        // alice's only device has everything; carol's laptop has only the
        // first entry; bob has no device at all.
        s.device_ack("alice", "phone", 3, 2).await.unwrap();
        s.device_ack("carol", "phone", 3, 2).await.unwrap();
        s.device_ack("carol", "laptop", 1, 2).await.unwrap();
        tail_compacted(&db).await;
        let kept = |owner: &str, seqs: &[i64]| -> Vec<(String, i64)> {
            seqs.iter().map(|seq| (owner.to_owned(), *seq)).collect()
        };
        let mut expected = kept("bob", &[1, 2, 3]);
        expected.extend(kept("carol", &[2, 3]));
        assert_eq!(in_log(&raw).await, expected);
        // What is owed is still read as before.
        let owed = seqs_after(&s, "carol", 1).await;
        assert_eq!(owed, [2, 3]);
        // alice's numbers are never handed out again, also after a restart
        // (her log is empty now).
        s.close().await;
        let s = db.open().await;
        assert_eq!(s.inbox_head("alice").await.unwrap(), 3);
        assert_eq!(
            s.inbox_append("alice", &entry("alice3", "<message/>", 200))
                .await
                .unwrap(),
            4
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_waiting_in_the_tail_survive_a_restart() {
    run_sqlite_tail(|db: TestDb| async move {
        let s = db.open().await;
        let raw = db.raw().await;
        s.create_user("alice", &creds(1)).await.unwrap();
        for i in 0..3 {
            s.inbox_append("alice", &entry(&format!("a{i}"), "<message/>", 100 + i))
                .await
                .unwrap();
        }
        assert_eq!(in_tail(&db).await, 3);
        // Gone before any compaction: the next start moves them into the log.
        s.close().await;
        let s = db.open().await;
        assert_eq!(in_tail(&db).await, 0);
        assert_eq!(in_log(&raw).await.len(), 3);
        let seqs = seqs_after(&s, "alice", 0).await;
        assert_eq!(seqs, [1, 2, 3]);
        assert_eq!(
            s.inbox_append("alice", &entry("a3", "<message/>", 200))
                .await
                .unwrap(),
            4
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_origin_is_refused_after_its_entry_left_the_tail() {
    run_sqlite_tail(|db: TestDb| async move {
        let s = db.open().await;
        let raw = db.raw().await;
        s.create_user("alice", &creds(1)).await.unwrap();
        s.device_attach("alice", "phone", 1).await.unwrap();
        assert_eq!(
            s.inbox_append("alice", &with_origin("a", "bob\no1"))
                .await
                .unwrap(),
            1
        );
        s.device_ack("alice", "phone", 1, 2).await.unwrap();
        tail_compacted(&db).await;
        assert!(in_log(&raw).await.is_empty(), "delivered: dropped");
        assert!(matches!(
            s.inbox_append("alice", &with_origin("b", "bob\no1")).await,
            Err(StoreError::Duplicate(_))
        ));
        assert!(
            s.inbox_append("alice", &with_origin("c", "bob\no2"))
                .await
                .is_ok()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_account_leaves_nothing_in_the_tail() {
    run_sqlite_tail(|db: TestDb| async move {
        let s = db.open().await;
        s.create_user("alice", &creds(1)).await.unwrap();
        s.inbox_append("alice", &entry("a0", "<message/>", 100))
            .await
            .unwrap();
        assert_eq!(in_tail(&db).await, 1);
        assert!(s.delete_user("alice").await.unwrap());
        assert_eq!(in_tail(&db).await, 0);
        // A new account under the name starts empty, and stays so.
        s.create_user("alice", &creds(2)).await.unwrap();
        assert!(s.inbox_after("alice", 0, 10).await.unwrap().is_empty());
        s.inbox_append("alice", &entry("b0", "<message/>", 200))
            .await
            .unwrap();
        tail_compacted(&db).await;
        let ids = ids_of(&s, "alice").await;
        assert_eq!(ids, ["b0"]);
    })
    .await;
}

/// What a crash or power loss leaves in the tail's directory: a replaced
/// file not deleted yet (its entries still needed if the compaction that
/// replaced it was undone) is recovered into the log; a torn one is set aside
/// and the server still starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_left_in_the_tail_are_recovered_or_set_aside() {
    run_sqlite(|db: TestDb| async move {
        let s = db.open().await;
        s.create_user("alice", &creds(1)).await.unwrap();
        let dir = std::path::PathBuf::from(format!("{}-tail", db.sqlite_file().display()));
        std::fs::create_dir_all(&dir).unwrap();
        {
            let left = rusqlite::Connection::open(dir.join("0.7.db")).unwrap();
            left.execute_batch(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE entries (id INTEGER PRIMARY KEY, owner TEXT NOT NULL,
                    seq INTEGER NOT NULL, stanza_id TEXT NOT NULL, sender TEXT NOT NULL,
                    kind TEXT NOT NULL, xml TEXT NOT NULL, at_micros INTEGER NOT NULL,
                    peer TEXT NOT NULL, direction TEXT NOT NULL, body TEXT, origin TEXT);
                 INSERT INTO entries VALUES (1, 'alice', 1, 'left1', 'bob@localhost',
                    'chat', '<message/>', 1, 'bob@localhost', 'in', NULL, NULL);
                 INSERT INTO entries VALUES (2, 'ghost', 1, 'gone1', 'bob@localhost',
                    'chat', '<message/>', 1, 'bob@localhost', 'in', NULL, NULL);",
            )
            .unwrap();
        }
        std::fs::write(dir.join("1.7.db"), b"torn by a power loss, not a database").unwrap();
        // The server's start.
        s.set_tail(
            Some(std::sync::Arc::new(|_: &str| true)),
            Delivered::Dropped,
        )
        .await
        .expect("the server starts");
        assert_eq!(ids_of(&s, "alice").await, ["left1"]);
        assert_eq!(s.inbox_head("alice").await.unwrap(), 1);
        assert!(dir.join("1.7.db.unreadable").exists(), "set aside");
        assert!(!dir.join("0.7.db").exists(), "recovered and deleted");
        // New entries go on from there.
        s.inbox_append("alice", &entry("a2", "<message/>", 200))
            .await
            .unwrap();
        assert_eq!(ids_of(&s, "alice").await, ["left1", "a2"]);
    })
    .await;
}

/// A store with alice and bob, the log's tail on (delivered entries dropped)
/// and only alice with a session; and a raw pool on its database.
async fn alice_with_a_session(db: &TestDb) -> (Store, sqlx::AnyPool) {
    let s = db.open().await;
    let raw = db.raw().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    s.create_user("bob", &creds(2)).await.unwrap();
    s.set_tail(
        Some(std::sync::Arc::new(|owner: &str| owner == "alice")),
        Delivered::Dropped,
    )
    .await
    .unwrap();
    (s, raw)
}

/// SQLite commits a transaction's files one by one, the main file first; the
/// log's tail failing after it (a full disk) is injected here. An entry the
/// batch wrote to the main file tells that it committed: the tail's rows then
/// go into the log, and the batch stands. With none (every entry was for the
/// tail), nothing was stored: the append fails, and sending it again stores
/// it once, numbered as the failed one would have been.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_failing_after_the_main_file_loses_nothing_acknowledged() {
    run_sqlite(|db: TestDb| async move {
        let (s, raw) = alice_with_a_session(&db).await;
        let database = &db.sqlite_file();

        // bob has no session: his entry is in the main file, alice's in the tail.
        fault::fail_next_tail_commit(database);
        let seqs = s
            .inbox_append_all(&[
                ("alice", entry("a0", "<message/>", 100)),
                ("bob", entry("b0", "<message/>", 100)),
            ])
            .await
            .unwrap();
        let seqs: Vec<i64> = seqs.into_iter().map(|seq| seq.unwrap()).collect();
        assert_eq!(seqs, [1, 1]);
        assert_eq!(in_tail(&db).await, 0, "the fault took alice's entry out");
        assert_eq!(
            in_log(&raw).await,
            [("alice".to_owned(), 1), ("bob".to_owned(), 1)]
        );

        // Only tail rows: nothing tells, and nothing was stored.
        fault::fail_next_tail_commit(database);
        let failed = s
            .inbox_append("alice", &entry("a1", "<message/>", 101))
            .await;
        assert!(
            failed
                .as_ref()
                .is_err_and(|error| error.to_string().contains("part-way")),
            "{failed:?}"
        );
        assert_eq!(in_tail(&db).await, 0);
        assert_eq!(
            s.inbox_append("alice", &entry("a1", "<message/>", 101))
                .await
                .unwrap(),
            2
        );
        assert_eq!(ids_of(&s, "alice").await, ["a0", "a1"]);
    })
    .await;
}

/// The same for a settle (a read, a login) of an owner whose entries wait in
/// the tail: its part of the commit — their deletion from the tail's file —
/// failing after the main file moved them into `inbox`. The entries moved are
/// the witness: the read goes on and sees them once; the next settle moves
/// nothing twice and empties the tail; numbering goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settle_failing_after_the_main_file_moves_nothing_twice() {
    run_sqlite(|db: TestDb| async move {
        let (s, raw) = alice_with_a_session(&db).await;
        let database = &db.sqlite_file();
        for (i, id) in ["a0", "a1"].into_iter().enumerate() {
            s.inbox_append("alice", &entry(id, "<message/>", 100 + i as i64))
                .await
                .unwrap();
        }
        assert_eq!(in_tail(&db).await, 2);
        assert_eq!(in_log(&raw).await, []);

        fault::fail_next_tail_settle(database);
        assert_eq!(ids_of(&s, "alice").await, ["a0", "a1"]);
        assert_eq!(in_tail(&db).await, 2, "the tail's deletions did not commit");
        assert_eq!(
            in_log(&raw).await,
            [("alice".to_owned(), 1), ("alice".to_owned(), 2)]
        );

        // Settled again before the next read: nothing is moved twice.
        assert_eq!(ids_of(&s, "alice").await, ["a0", "a1"]);
        assert_eq!(in_tail(&db).await, 0);
        assert_eq!(
            s.inbox_append("alice", &entry("a2", "<message/>", 102))
                .await
                .unwrap(),
            3
        );
        assert_eq!(ids_of(&s, "alice").await, ["a0", "a1", "a2"]);
        assert_eq!(
            in_log(&raw).await,
            [
                ("alice".to_owned(), 1),
                ("alice".to_owned(), 2),
                ("alice".to_owned(), 3)
            ]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_entries_of_owners_with_a_session_wait_in_the_tail() {
    run_sqlite(|db: TestDb| async move {
        let (s, raw) = alice_with_a_session(&db).await;
        s.inbox_append_all(&[
            ("alice", entry("a0", "<message/>", 100)),
            ("bob", entry("b0", "<message/>", 100)),
        ])
        .await
        .unwrap();
        // bob has no session: his entry won't be delivered soon, so it goes
        // to the log at once.
        assert_eq!(in_tail(&db).await, 1);
        assert_eq!(in_log(&raw).await, [("bob".to_owned(), 1)]);
        // Switched off: everything goes to the log at once.
        s.set_tail(None, Delivered::Dropped).await.unwrap();
        s.inbox_append("alice", &entry("a1", "<message/>", 101))
            .await
            .unwrap();
        assert_eq!(in_tail(&db).await, 1);
        let seqs = seqs_after(&s, "alice", 0).await;
        assert_eq!(seqs, [1, 2]);
        assert_eq!(in_tail(&db).await, 0, "a read settles the owner's tail");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_after_its_owner_went_offline_is_still_a_duplicate() {
    run_sqlite(|db: TestDb| async move {
        let s = db.open().await;
        s.create_user("alice", &creds(1)).await.unwrap();
        s.set_tail(
            Some(std::sync::Arc::new(|_: &str| true)),
            Delivered::Dropped,
        )
        .await
        .unwrap();
        s.inbox_append("alice", &with_origin("a", "bob\no1"))
            .await
            .unwrap();
        // alice's sessions are gone: the resend would go to the log at once,
        // where the first copy is not (yet).
        s.set_tail(
            Some(std::sync::Arc::new(|_: &str| false)),
            Delivered::Dropped,
        )
        .await
        .unwrap();
        assert!(matches!(
            s.inbox_append("alice", &with_origin("b", "bob\no1")).await,
            Err(StoreError::Duplicate(_))
        ));
        let ids = ids_of(&s, "alice").await;
        assert_eq!(ids, ["a"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_with_a_lagging_device_skips_the_tail_for_a_while() {
    run_sqlite_tail(|db: TestDb| async move {
        let s = db.open().await;
        let raw = db.raw().await;
        s.create_user("bob", &creds(2)).await.unwrap();
        // The phone keeps up; the laptop never does.
        s.device_attach("bob", "phone", 1).await.unwrap();
        s.device_attach("bob", "laptop", 1).await.unwrap();
        s.inbox_append("bob", &entry("b0", "<message/>", 100))
            .await
            .unwrap();
        s.device_ack("bob", "phone", 1, 2).await.unwrap();
        assert_eq!(in_tail(&db).await, 1);
        tail_compacted(&db).await;
        assert_eq!(
            in_log(&raw).await,
            [("bob".to_owned(), 1)],
            "owed to the laptop"
        );
        // Written twice is what the tail costs such an owner: now straight to
        // the log.
        s.inbox_append("bob", &entry("b1", "<message/>", 101))
            .await
            .unwrap();
        assert_eq!(in_tail(&db).await, 0);
        assert_eq!(in_log(&raw).await.len(), 2);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_that_missed_only_the_newest_entries_does_not_lag() {
    run_sqlite_tail(|db: TestDb| async move {
        let s = db.open().await;
        let raw = db.raw().await;
        s.create_user("bob", &creds(2)).await.unwrap();
        s.device_attach("bob", "phone", 1).await.unwrap();
        for id in ["b0", "b1"] {
            s.inbox_append("bob", &entry(id, "<message/>", 100))
                .await
                .unwrap();
        }
        // The phone's cursor was recorded before the newest arrived (as a
        // session records it once a second under load).
        s.device_ack("bob", "phone", 1, 2).await.unwrap();
        tail_compacted(&db).await;
        assert_eq!(in_log(&raw).await, [("bob".to_owned(), 2)], "b1 owed");
        // Not a lagging device: its next entries still wait in the tail.
        s.inbox_append("bob", &entry("b2", "<message/>", 101))
            .await
            .unwrap();
        assert_eq!(in_tail(&db).await, 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_account_under_a_deleted_name_may_reuse_origin_ids() {
    run_sqlite_tail(|db: TestDb| async move {
        let s = db.open().await;
        s.create_user("alice", &creds(1)).await.unwrap();
        s.inbox_append("alice", &with_origin("a", "bob\no1"))
            .await
            .unwrap();
        assert!(s.delete_user("alice").await.unwrap());
        s.create_user("alice", &creds(2)).await.unwrap();
        assert_eq!(
            s.inbox_append("alice", &with_origin("b", "bob\no1"))
                .await
                .unwrap(),
            1
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivered_sweep_compacts_what_waits_in_the_tail() {
    run_sqlite_tail(|db: TestDb| async move {
        let s = db.open().await;
        let raw = db.raw().await;
        s.create_user("alice", &creds(1)).await.unwrap();
        s.device_attach("alice", "phone", 1).await.unwrap();
        for i in 0..3 {
            s.inbox_append("alice", &entry(&format!("a{i}"), "<message/>", 100 + i))
                .await
                .unwrap();
        }
        s.device_ack("alice", "phone", 2, 2).await.unwrap();
        assert_eq!(in_tail(&db).await, 3);
        // Long before the tail's own compaction: the sweep does it.
        assert_eq!(s.inbox_delete_delivered().await.unwrap(), 2);
        assert_eq!(in_tail(&db).await, 0);
        assert_eq!(in_log(&raw).await, [("alice".to_owned(), 3)]);
    })
    .await;
}

/// With an archive, the tail's compaction moves every entry into the log —
/// delivered or not, of owners with lagging devices too — and the archive
/// reads them as if they had been appended there (numbers, order, search).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_archive_the_tail_moves_every_entry_into_the_log() {
    run_sqlite_archive(|db: TestDb| async move {
        let s = db.open().await;
        let raw = db.raw().await;
        create_users(&s, ["alice", "bob", "carol"]).await;
        s.device_attach("alice", "phone", 1).await.unwrap();
        s.device_attach("bob", "phone", 1).await.unwrap();
        s.device_attach("bob", "laptop", 1).await.unwrap();
        append_in_turn(&s, ["carol", "alice", "bob"]).await;
        assert_eq!(in_tail(&db).await, 9);
        assert!(in_log(&raw).await.is_empty());
        // alice's phone has everything; bob's laptop lags; carol has no device.
        s.device_ack("alice", "phone", 3, 2).await.unwrap();
        s.device_ack("bob", "phone", 3, 2).await.unwrap();
        tail_compacted(&db).await;
        let mut expected = Vec::new();
        for user in ["alice", "bob", "carol"] {
            expected.extend((1..=3).map(|seq| (user.to_owned(), seq)));
        }
        assert_eq!(in_log(&raw).await, expected, "kept, delivered or not");
        for user in ["alice", "bob", "carol"] {
            let ids: Vec<String> = (0..3).map(|i| format!("{user}{i}")).collect();
            assert_eq!(ids_of(&s, user).await, ids);
        }
        // Not lagging here: bob's next entry waits in the tail as before.
        assert_eq!(
            s.inbox_append("bob", &entry("bob3", "<message/>", 200))
                .await
                .unwrap(),
            4
        );
        assert_eq!(in_tail(&db).await, 1);
        // A read settles it at once, in order after the moved ones.
        assert_eq!(seqs_after(&s, "bob", 0).await, [1, 2, 3, 4]);
        // The "until delivered" sweep (not this server's retention, but the
        // store's call) still finds what is delivered after a compaction.
        s.inbox_append("alice", &entry("alice3", "<message/>", 201))
            .await
            .unwrap();
        assert_eq!(s.inbox_delete_delivered().await.unwrap(), 3);
        assert_eq!(ids_of(&s, "alice").await, ["alice3"]);
    })
    .await;
}

/// With an archive, a generation larger than a drain's chunk moves in several
/// transactions between others' writes; a read settling one owner meanwhile,
/// and an owner deleted meanwhile, change nothing for the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_archive_a_large_generation_moves_in_chunks() {
    run_sqlite_archive(|db: TestDb| async move {
        let s = db.open().await;
        let raw = db.raw().await;
        let users: Vec<String> = (0..8).map(|i| format!("user{i}")).collect();
        for (i, user) in users.iter().enumerate() {
            s.create_user(user, &creds(i as u8)).await.unwrap();
        }
        let ids: Vec<Vec<String>> = users
            .iter()
            .map(|user| (0..150).map(|i| format!("{user}-{i}")).collect())
            .collect();
        for i in 0..150 {
            let batch: Vec<(&str, NewInboxEntry)> = users
                .iter()
                .zip(&ids)
                .map(|(user, ids)| (user.as_str(), entry(&ids[i], "<message/>", i as i64)))
                .collect();
            for result in s.inbox_append_all(&batch).await.unwrap() {
                result.unwrap();
            }
        }
        assert_eq!(in_tail(&db).await, 8 * 150);
        assert_eq!(seqs_after(&s, "user0", 148).await, [149, 150]);
        assert!(s.delete_user("user1").await.unwrap());
        tail_compacted(&db).await;
        let log = in_log(&raw).await;
        for (user, ids) in users.iter().zip(&ids).skip(2) {
            let seqs: Vec<i64> = log
                .iter()
                .filter(|(owner, _)| owner == user)
                .map(|(_, seq)| *seq)
                .collect();
            assert_eq!(seqs, (1..=150).collect::<Vec<i64>>(), "{user}");
            assert_eq!(&ids_of_all(&s, user).await, ids, "{user}");
        }
        assert_eq!(ids_of_all(&s, "user0").await, ids[0]);
        assert!(log.iter().all(|(owner, _)| owner != "user1"), "deleted");
    })
    .await;
}

/// Every archive id of `owner`'s log, in order (page by page).
async fn ids_of_all(s: &Store, owner: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut after = 0;
    loop {
        let page = s.inbox_after(owner, after, 500).await.unwrap();
        let Some(last) = page.last() else {
            return ids;
        };
        after = last.seq;
        ids.extend(page.into_iter().map(|e| e.stanza_id));
    }
}

/// With an archive, the tail switched off (no owner counts as online any
/// more) still moves what waits there into the log: nothing is dropped as
/// delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_archive_switching_the_tail_off_keeps_delivered_entries() {
    run_sqlite_archive(|db: TestDb| async move {
        let s = db.open().await;
        let raw = db.raw().await;
        s.create_user("alice", &creds(1)).await.unwrap();
        s.device_attach("alice", "phone", 1).await.unwrap();
        for i in 0..3 {
            s.inbox_append("alice", &entry(&format!("a{i}"), "<message/>", 100 + i))
                .await
                .unwrap();
        }
        s.device_ack("alice", "phone", 3, 2).await.unwrap();
        assert_eq!(in_tail(&db).await, 3);
        s.set_tail(None, Delivered::Kept).await.unwrap();
        tail_compacted(&db).await;
        assert_eq!(in_log(&raw).await.len(), 3, "kept, though delivered");
        assert_eq!(ids_of(&s, "alice").await, ["a0", "a1", "a2"]);
    })
    .await;
}

/// With an archive, one owner with more entries in a generation than a
/// drain's chunk moves in several chunks, in order; an owner read (settled)
/// and appended to again in the same generation moves once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_archive_an_owner_above_a_chunk_moves_in_order() {
    run_sqlite_archive(|db: TestDb| async move {
        let s = db.open().await;
        let raw = db.raw().await;
        s.create_user("alice", &creds(1)).await.unwrap();
        s.create_user("bob", &creds(2)).await.unwrap();
        let ids: Vec<String> = (0..1_300).map(|i| format!("a{i}")).collect();
        for batch in ids.chunks(100) {
            let entries: Vec<(&str, NewInboxEntry)> = batch
                .iter()
                .map(|id| ("alice", entry(id, "<message/>", 1)))
                .collect();
            for result in s.inbox_append_all(&entries).await.unwrap() {
                result.unwrap();
            }
        }
        s.inbox_append("bob", &entry("b0", "<message/>", 1))
            .await
            .unwrap();
        assert_eq!(ids_of(&s, "bob").await, ["b0"], "settled by the read");
        s.inbox_append("bob", &entry("b1", "<message/>", 2))
            .await
            .unwrap();
        tail_compacted(&db).await;
        let log = in_log(&raw).await;
        let alice: Vec<i64> = log
            .iter()
            .filter(|(owner, _)| owner == "alice")
            .map(|(_, seq)| *seq)
            .collect();
        assert_eq!(alice, (1..=1_300).collect::<Vec<i64>>());
        assert_eq!(ids_of_all(&s, "alice").await, ids);
        assert_eq!(ids_of(&s, "bob").await, ["b0", "b1"]);
    })
    .await;
}

#[tokio::test]
async fn a_lease_is_held_by_one_store_at_a_time() {
    run_postgres(|db: TestDb| async move {
        const KEY: i64 = 0x6b69_7468_7465_7374;
        let (a, b) = (db.open().await, db.open().await);
        let mut held = a.try_lease(KEY).await.unwrap().expect("free at first");
        assert!(b.try_lease(KEY).await.unwrap().is_none(), "held by a");
        assert!(held.alive().await);
        // Another key is another role.
        assert!(b.try_lease(KEY + 1).await.unwrap().is_some());
        held.release().await;
        let mut taken = b.try_lease(KEY).await.unwrap().expect("free once let go");
        assert!(taken.alive().await);
        assert!(a.try_lease(KEY).await.unwrap().is_none(), "now b's");
        // Dropping lets go too (PostgreSQL sees the connection end).
        drop(taken);
        let mut again = None;
        for _ in 0..50 {
            again = a.try_lease(KEY).await.unwrap();
            if again.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(again.is_some(), "a dropped lease is let go");
    })
    .await;
}

#[tokio::test]
async fn a_lease_is_always_granted_on_sqlite() {
    run_sqlite(|db: TestDb| async move {
        let store = db.open().await;
        let mut one = store.try_lease(1).await.unwrap().expect("granted");
        let mut two = store
            .try_lease(1)
            .await
            .unwrap()
            .expect("granted again: one process");
        assert!(one.alive().await && two.alive().await);
    })
    .await;
}
