//! Group chat rooms (XEP-0045): rooms, affiliations, invite links and the room's
//! archive log, on SQLite always and on PostgreSQL when `KITH_TEST_PG_URL` is set.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use kith_store::{
    ArchiveQuery, Delivered, Live, NewInboxEntry, Result, RoomAffiliation, RoomInvite, RoomMember,
    Store, StoreError, fault,
};

mod common;
use common::{
    TestDb, creds, in_log, in_tail, run_postgres, run_sqlite, run_sqlite_archive, run_sqlite_tail,
    tail_compacted,
};

all_three!(
    rooms_round_trip,
    rooms_are_not_accounts,
    affiliations_change_in_one_transaction,
    group_message_fans_out_in_one_commit,
    invites_can_be_revoked,
    destroying_a_room_removes_everything,
);

const ROOM: &str = "team@conference.localhost";

async fn store_with_users(db: &TestDb, users: &[&str]) -> Store {
    let store = db.open().await;
    for (i, user) in users.iter().enumerate() {
        assert!(store.create_user(user, &creds(i as u8)).await.unwrap());
    }
    store
}

fn entry<'a>(xml: &'a str, id: &'a str, body: &'a str) -> NewInboxEntry<'a> {
    NewInboxEntry {
        stanza_id: id,
        sender: "team@conference.localhost/alice",
        kind: "groupchat",
        xml,
        at_micros: 10,
        peer: ROOM,
        direction: "in",
        body: Some(body),
        origin: None,
    }
}

async fn rooms_round_trip(db: TestDb) {
    let store = store_with_users(&db, &["alice"]).await;
    assert!(
        store
            .muc_create_room(ROOM, "persistent=1", "alice@localhost", 5)
            .await
            .unwrap()
    );
    // A second create changes nothing.
    assert!(
        !store
            .muc_create_room(ROOM, "other", "bob@localhost", 6)
            .await
            .unwrap()
    );
    let room = store.muc_room(ROOM).await.unwrap().unwrap();
    assert_eq!(room.config, "persistent=1");
    assert_eq!(room.created_micros, 5);
    assert!(store.muc_set_config(ROOM, "persistent=0").await.unwrap());
    assert!(store.muc_set_subject(ROOM, "Plans", "alice").await.unwrap());
    let room = store.muc_room(ROOM).await.unwrap().unwrap();
    assert_eq!(
        (
            room.config.as_str(),
            room.subject.as_str(),
            room.subject_by.as_str()
        ),
        ("persistent=0", "Plans", "alice")
    );
    assert!(
        !store
            .muc_set_config("nope@conference.localhost", "x")
            .await
            .unwrap()
    );
    assert!(
        store
            .muc_room("nope@conference.localhost")
            .await
            .unwrap()
            .is_none()
    );
    let all = store.muc_rooms().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(
        store.muc_affiliations(ROOM).await.unwrap(),
        vec![RoomAffiliation {
            jid: "alice@localhost".into(),
            affiliation: "owner".into(),
            since_micros: 5
        }]
    );
}

async fn rooms_are_not_accounts(db: TestDb) {
    let store = store_with_users(&db, &["alice"]).await;
    store
        .muc_create_room(ROOM, "", "alice@localhost", 1)
        .await
        .unwrap();
    assert_eq!(store.list_users().await.unwrap(), vec!["alice".to_owned()]);
}

async fn affiliations_change_in_one_transaction(db: TestDb) {
    let store = store_with_users(&db, &["alice"]).await;
    store
        .muc_create_room(ROOM, "", "alice@localhost", 1)
        .await
        .unwrap();
    let member = |jid: &str, affiliation: &str, since| RoomAffiliation {
        jid: jid.into(),
        affiliation: affiliation.into(),
        since_micros: since,
    };
    store
        .muc_set_affiliations(
            ROOM,
            &[
                member("bob@localhost", "member", 2),
                member("carol@localhost", "admin", 3),
            ],
            &[],
        )
        .await
        .unwrap();
    store
        .muc_set_affiliations(
            ROOM,
            &[member("bob@localhost", "outcast", 4)],
            &["carol@localhost"],
        )
        .await
        .unwrap();
    let list = store.muc_affiliations(ROOM).await.unwrap();
    assert_eq!(
        list,
        vec![
            member("alice@localhost", "owner", 1),
            member("bob@localhost", "outcast", 4)
        ]
    );
}

/// Who has a session, as the writer asks it.
#[derive(Clone, Default)]
struct Sessions(Arc<Mutex<HashSet<String>>>);

impl Sessions {
    fn set(&self, users: &[&str]) {
        let mut live = self.0.lock().unwrap();
        live.clear();
        live.extend(users.iter().map(|u| format!("{u}@localhost")));
    }

    fn live(&self) -> Live {
        let sessions = self.0.clone();
        Arc::new(move |bare: &str| sessions.lock().unwrap().contains(bare))
    }
}

fn members(names: &[&str]) -> Vec<RoomMember> {
    names
        .iter()
        .map(|name| RoomMember {
            owner: (*name).to_owned(),
            bare: format!("{name}@localhost"),
        })
        .collect()
}

/// Sends one group message to `to` and waits for its commit; the room's result,
/// then each member's.
async fn say(store: &Store, text: &str, to: &[&str], sessions: &Sessions) -> Vec<Result<i64>> {
    let xml =
        format!("<message xmlns='jabber:client' type='groupchat'><body>{text}</body></message>");
    let id = format!("id-{text}");
    let (done, results) = tokio::sync::oneshot::channel();
    store
        .room_append_then(
            ROOM,
            &entry(&xml, &id, text),
            members(to),
            sessions.live(),
            move |results| {
                let _ = done.send(results);
            },
        )
        .await
        .unwrap();
    results.await.unwrap()
}

/// The bodies in `owner`'s log, in log order.
async fn bodies(store: &Store, owner: &str) -> Vec<String> {
    store
        .inbox_after(owner, 0, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| {
            let start = e.xml.find("<body>").unwrap() + 6;
            let end = e.xml.find("</body>").unwrap();
            e.xml[start..end].to_owned()
        })
        .collect()
}

fn owed(result: &Result<i64>) -> bool {
    matches!(result, Err(StoreError::Owed(_)))
}

/// alice, bob and carol, all members of the room `ROOM`.
async fn team_of_three(db: &TestDb) -> Store {
    let store = store_with_users(db, &TEAM).await;
    store
        .muc_create_room(ROOM, "", "alice@localhost", 1)
        .await
        .unwrap();
    store
        .room_join(ROOM, TEAM.iter().map(|s| s.to_string()).collect())
        .await
        .unwrap();
    store
}

const TEAM: [&str; 3] = ["alice", "bob", "carol"];

async fn group_message_fans_out_in_one_commit(db: TestDb) {
    let store = team_of_three(&db).await;
    let all = TEAM;
    let sessions = Sessions::default();
    sessions.set(&all);
    let results = say(&store, "hello team", &all, &sessions).await;
    assert_eq!(
        results
            .iter()
            .map(|r| *r.as_ref().unwrap())
            .collect::<Vec<_>>(),
        [1, 1, 1, 1]
    );
    for owner in all {
        let got = store.inbox_after(owner, 0, 10).await.unwrap();
        assert_eq!(got.len(), 1);
        // A member's copy: no archive id, the room as the peer, no text for search.
        assert_eq!(
            (
                got[0].stanza_id.as_str(),
                got[0].peer.as_str(),
                got[0].body.as_deref()
            ),
            ("", ROOM, None)
        );
    }
    // The room's archive is a log like any other, searchable by its ids.
    let page = store
        .archive_query(
            ROOM,
            &ArchiveQuery {
                max: 10,
                ..ArchiveQuery::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].stanza_id, "id-hello team");
}

all_three!(members_without_a_session_are_owed_group_messages_and_get_each_once);

/// The room cursor: a member without a session gets no copy; it is owed the
/// messages, in order, once, when it catches up, connects mid-stream, or leaves;
/// a member who joins later is owed nothing from before; it all survives a restart.
async fn members_without_a_session_are_owed_group_messages_and_get_each_once(db: TestDb) {
    let users = ["alice", "bob", "carol", "dave"];
    let store = store_with_users(&db, &users).await;
    store
        .muc_create_room(ROOM, "", "alice@localhost", 1)
        .await
        .unwrap();
    let three = ["alice", "bob", "carol"];
    store
        .room_join(ROOM, three.iter().map(|s| s.to_string()).collect())
        .await
        .unwrap();
    assert!(
        store
            .device_attach("bob", "phone", 1)
            .await
            .unwrap()
            .in_rooms
    );
    assert!(
        !store
            .device_attach("dave", "phone", 1)
            .await
            .unwrap()
            .in_rooms
    );
    let sessions = Sessions::default();
    sessions.set(&["alice"]);

    let results = say(&store, "m1", &three, &sessions).await;
    assert_eq!(*results[0].as_ref().unwrap(), 1);
    assert_eq!(*results[1].as_ref().unwrap(), 1);
    assert!(owed(&results[2]) && owed(&results[3]), "{results:?}");
    say(&store, "m2", &three, &sessions).await;
    assert!(bodies(&store, "bob").await.is_empty());
    assert_eq!(store.inbox_count(ROOM).await.unwrap(), 2);

    // Bob connects: his next group message brings what he was owed first.
    sessions.set(&["alice", "bob"]);
    let results = say(&store, "m3", &three, &sessions).await;
    assert_eq!(*results[2].as_ref().unwrap(), 3);
    assert_eq!(bodies(&store, "bob").await, ["m1", "m2", "m3"]);

    // Carol catches up: everything, once.
    store.room_catch_up("carol").await.unwrap();
    store.room_catch_up("carol").await.unwrap();
    assert_eq!(bodies(&store, "carol").await, ["m1", "m2", "m3"]);

    // Carol leaves while owed m4: she gets it, and nothing after.
    say(&store, "m4", &three, &sessions).await;
    store.room_leave(ROOM, vec!["carol".into()]).await.unwrap();
    assert!(
        !store
            .device_attach("carol", "phone", 2)
            .await
            .unwrap()
            .in_rooms
    );
    let two = ["alice", "bob"];
    say(&store, "m5", &two, &sessions).await;
    store.room_catch_up("carol").await.unwrap();
    assert_eq!(bodies(&store, "carol").await, ["m1", "m2", "m3", "m4"]);

    // Dave joins now: owed nothing from before.
    store.room_join(ROOM, vec!["dave".into()]).await.unwrap();
    let four = ["alice", "bob", "dave"];
    say(&store, "m6", &four, &sessions).await;
    // A join of a member changes nothing (a room loaded again).
    store
        .room_join(ROOM, four.iter().map(|s| s.to_string()).collect())
        .await
        .unwrap();

    // Members that got every message stand at the room's mark: no row written
    // per message for them; the others have their own number.
    let raw = db.raw().await;
    let rows: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT owner, seq FROM room_fill WHERE room = $1 ORDER BY owner")
            .bind(ROOM)
            .fetch_all(&raw)
            .await
            .unwrap();
    assert_eq!(
        rows,
        [
            ("alice".to_owned(), None),
            ("bob".to_owned(), None),
            ("dave".to_owned(), Some(5)),
        ]
    );
    let (mark,): (i64,) = sqlx::query_as("SELECT seq FROM room_marks WHERE room = $1")
        .bind(ROOM)
        .fetch_one(&raw)
        .await
        .unwrap();
    assert_eq!(mark, 6);

    // Where everyone stands survives a restart (and so do copies waiting in
    // the log's tail).
    store.close().await;
    let store = db.open().await;
    sessions.set(&[]);
    say(&store, "m7", &four, &sessions).await;
    for owner in ["alice", "bob", "dave"] {
        store.room_catch_up(owner).await.unwrap();
    }
    assert_eq!(
        bodies(&store, "alice").await,
        ["m1", "m2", "m3", "m4", "m5", "m6", "m7"]
    );
    assert_eq!(
        bodies(&store, "bob").await,
        ["m1", "m2", "m3", "m4", "m5", "m6", "m7"]
    );
    assert_eq!(bodies(&store, "dave").await, ["m6", "m7"]);
    // Numbers in each log are 1, 2, 3 …: copies were numbered like any entry.
    let seqs: Vec<i64> = store
        .inbox_after("bob", 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    assert_eq!(store.inbox_count(ROOM).await.unwrap(), 7);
}

async fn invites_can_be_revoked(db: TestDb) {
    let store = store_with_users(&db, &["alice"]).await;
    store
        .muc_create_room(ROOM, "", "alice@localhost", 1)
        .await
        .unwrap();
    let invite = RoomInvite {
        token: "tok1".into(),
        room: ROOM.into(),
        created_by: "alice@localhost".into(),
        created_micros: 7,
        revoked: false,
    };
    store.muc_create_invite(&invite).await.unwrap();
    assert_eq!(
        store.muc_invite("tok1").await.unwrap(),
        Some(invite.clone())
    );
    assert!(store.muc_invite("nope").await.unwrap().is_none());
    assert!(
        !store
            .muc_revoke_invite("x@conference.localhost", "tok1")
            .await
            .unwrap()
    );
    assert!(store.muc_revoke_invite(ROOM, "tok1").await.unwrap());
    assert!(store.muc_invite("tok1").await.unwrap().unwrap().revoked);
    assert_eq!(store.muc_invites(ROOM).await.unwrap().len(), 1);
}

async fn destroying_a_room_removes_everything(db: TestDb) {
    let store = store_with_users(&db, &["alice"]).await;
    store
        .muc_create_room(ROOM, "", "alice@localhost", 1)
        .await
        .unwrap();
    let xml = "<message xmlns='jabber:client'/>";
    store
        .inbox_append(ROOM, &entry(xml, "id", "x"))
        .await
        .unwrap();
    store
        .muc_create_invite(&RoomInvite {
            token: "t".into(),
            room: ROOM.into(),
            created_by: "alice@localhost".into(),
            created_micros: 1,
            revoked: false,
        })
        .await
        .unwrap();
    store.room_join(ROOM, vec!["alice".into()]).await.unwrap();
    let sessions = Sessions::default();
    sessions.set(&["alice"]);
    say(&store, "old room", &["alice"], &sessions).await;
    assert!(store.muc_destroy_room(ROOM).await.unwrap());
    assert!(store.muc_room(ROOM).await.unwrap().is_none());
    assert!(store.muc_invite("t").await.unwrap().is_none());
    assert!(store.muc_affiliations(ROOM).await.unwrap().is_empty());
    assert_eq!(store.inbox_count(ROOM).await.unwrap(), 0);
    assert!(!store.muc_destroy_room(ROOM).await.unwrap());
    // The name is free again, and a new room under it starts afresh.
    assert!(
        store
            .muc_create_room(ROOM, "", "alice@localhost", 2)
            .await
            .unwrap()
    );
    store.room_join(ROOM, vec!["alice".into()]).await.unwrap();
    sessions.set(&[]);
    say(&store, "new room", &["alice"], &sessions).await;
    store.room_catch_up("alice").await.unwrap();
    assert_eq!(bodies(&store, "alice").await, ["old room", "new room"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_members_copies_wait_in_the_tail_until_delivered() {
    run_sqlite_tail(live_members_copies_wait_in_the_tail).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_members_copies_wait_in_the_tail_with_an_archive() {
    run_sqlite_archive(live_members_copies_wait_in_the_tail).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_failing_after_the_main_file_loses_no_copy_until_delivered() {
    run_sqlite_tail(a_tail_failing_after_the_main_file_loses_no_copy).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_failing_after_the_main_file_loses_no_copy_with_an_archive() {
    run_sqlite_archive(a_tail_failing_after_the_main_file_loses_no_copy).await;
}

/// SQLite commits a transaction's files one by one, the main file first. When
/// the tail's file then fails (a full disk; injected here), the room's entry
/// and the members' fill marks stand in the main file: the live members'
/// copies go into the log at once and the message counts as stored, rather
/// than failing with the copies lost and the room's entry kept.
async fn a_tail_failing_after_the_main_file_loses_no_copy(db: TestDb) {
    let store = team_of_three(&db).await;
    let raw = db.raw().await;
    for owner in ["alice", "bob"] {
        store.device_attach(owner, "phone", 1).await.unwrap();
    }
    let sessions = Sessions::default();
    sessions.set(&["alice", "bob"]);
    fault::fail_next_tail_commit(&db.sqlite_file());
    let results = say(&store, "m1", &TEAM, &sessions).await;
    let seqs: Vec<i64> = results[..3].iter().map(|r| *r.as_ref().unwrap()).collect();
    assert_eq!(seqs, [1, 1, 1], "{results:?}");
    assert!(owed(&results[3]), "{results:?}");
    // The fault took the copies out of the tail: they are in the log instead.
    assert_eq!(in_tail(&db).await, 0);
    assert_eq!(
        in_log(&raw).await,
        [
            ("alice".to_owned(), 1),
            ("bob".to_owned(), 1),
            (ROOM.to_owned(), 1)
        ]
    );
    for owner in ["alice", "bob"] {
        assert_eq!(bodies(&store, owner).await, ["m1"]);
    }
    // Numbers go on, the next copies wait in the tail, and the member who
    // was away gets each message once.
    let results = say(&store, "m2", &TEAM, &sessions).await;
    let seqs: Vec<i64> = results[..3].iter().map(|r| *r.as_ref().unwrap()).collect();
    assert_eq!(seqs, [2, 2, 2], "{results:?}");
    assert_eq!(in_tail(&db).await, 2);
    for owner in ["alice", "bob"] {
        assert_eq!(bodies(&store, owner).await, ["m1", "m2"]);
    }
    store.room_catch_up("carol").await.unwrap();
    assert_eq!(bodies(&store, "carol").await, ["m1", "m2"]);
}

/// With the log's tail on (SQLite), a live member's copy of a group message
/// waits in the tail like a 1:1 entry: dropped once every device has it (until
/// delivered) or moved into the log (an archive). The room's own entry and the
/// copies a member gets on catching up go to the log at once.
async fn live_members_copies_wait_in_the_tail(db: TestDb) {
    let store = team_of_three(&db).await;
    let raw = db.raw().await;
    let all = TEAM;
    for owner in ["alice", "bob"] {
        store.device_attach(owner, "phone", 1).await.unwrap();
    }
    let sessions = Sessions::default();
    sessions.set(&["alice", "bob"]);
    let results = say(&store, "m1", &all, &sessions).await;
    assert!(owed(&results[3]), "{results:?}");
    assert_eq!(in_tail(&db).await, 2, "alice's and bob's copies");
    assert_eq!(in_log(&raw).await, [(ROOM.to_owned(), 1)]);
    store.room_catch_up("carol").await.unwrap();
    assert_eq!(
        in_log(&raw).await,
        [("carol".to_owned(), 1), (ROOM.to_owned(), 1)]
    );
    assert_eq!(in_tail(&db).await, 2);

    for owner in ["alice", "bob"] {
        store.device_ack(owner, "phone", 1, 2).await.unwrap();
    }
    tail_compacted(&db).await;
    let expected: &[&str] = match db.tail {
        Some(Delivered::Dropped) => &["carol"],
        _ => &["alice", "bob", "carol"],
    };
    let mut expected: Vec<(String, i64)> = expected.iter().map(|o| ((*o).to_owned(), 1)).collect();
    expected.push((ROOM.to_owned(), 1));
    assert_eq!(in_log(&raw).await, expected);
    assert_eq!(store.inbox_count(ROOM).await.unwrap(), 1);
    // Numbers go on after what left the tail, also after a restart.
    store.close().await;
    let store = db.open().await;
    let results = say(&store, "m2", &all, &sessions).await;
    assert_eq!(*results[1].as_ref().unwrap(), 2);
    assert_eq!(*results[2].as_ref().unwrap(), 2);
}

all_three!(large_fan_out_gives_each_owner_the_next_number);

/// The bulk path (many distinct owners in one append) numbers every owner's log
/// like single appends do, and reports unknown owners one by one.
async fn large_fan_out_gives_each_owner_the_next_number(db: TestDb) {
    let names: Vec<String> = (0..40).map(|i| format!("m{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let store = store_with_users(&db, &refs).await;
    let xml = "<message xmlns='jabber:client'/>";
    // m00 already has two entries.
    for _ in 0..2 {
        store
            .inbox_append("m00", &entry(xml, "", "x"))
            .await
            .unwrap();
    }
    let mut entries: Vec<(&str, NewInboxEntry)> = refs
        .iter()
        .map(|name| (*name, entry(xml, "", "x")))
        .collect();
    entries.insert(5, ("nobody", entry(xml, "", "x")));
    let results = store.inbox_append_all(&entries).await.unwrap();
    assert_eq!(results.len(), 41);
    assert_eq!(*results[0].as_ref().unwrap(), 3);
    assert!(matches!(
        results[5],
        Err(kith_store::StoreError::NoSuchUser(_))
    ));
    for (i, result) in results.iter().enumerate().skip(1).filter(|(i, _)| *i != 5) {
        assert_eq!(*result.as_ref().unwrap(), 1, "entry {i}");
    }
    let got = store.inbox_after("m39", 0, 10).await.unwrap();
    assert_eq!((got.len(), got[0].seq), (1, 1));
    assert_eq!(store.inbox_after("m00", 0, 10).await.unwrap().len(), 3);
}

#[tokio::test]
async fn group_messages_are_fenced_by_the_rooms_lease() {
    run_postgres(|db: TestDb| async move {
        const KEY: i64 = 0x6b69_7468_6665_6e63;
        let store = team_of_three(&db).await;
        let sessions = Sessions::default();
        sessions.set(&TEAM);
        let lease = store.try_lease(KEY).await.unwrap().expect("free");
        let fence = lease.fence().expect("a PostgreSQL lease has a fence");
        store.fence_rooms(Some(fence));
        let results = say(&store, "while held", &TEAM, &sessions).await;
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        // The lease's backend goes away (another process may take it now).
        let raw = db.raw().await;
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted")
            .execute(&raw)
            .await
            .unwrap();
        // The backend ends a moment later.
        for _ in 0..100 {
            let (left,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
                    .fetch_one(&raw)
                    .await
                    .unwrap();
            if left == 0 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let results = say(&store, "after the lease", &TEAM, &sessions).await;
        // (Each job of a failed batch gets the batch's error as text.)
        assert!(
            results
                .iter()
                .all(|r| r.as_ref().is_err_and(|e| e.to_string().contains("fenced"))),
            "{results:?}"
        );
        for owner in TEAM {
            assert_eq!(bodies(&store, owner).await, ["while held"], "{owner}");
        }
        // What is not a room write goes on: a 1:1 message, a member's catch-up.
        let one = NewInboxEntry {
            stanza_id: "s1",
            sender: "bob@localhost/phone",
            kind: "message",
            xml: "<message xmlns='jabber:client'><body>direct</body></message>",
            at_micros: 11,
            peer: "bob@localhost",
            direction: "in",
            body: Some("direct"),
            origin: None,
        };
        store.inbox_append(TEAM[0], &one).await.unwrap();
        store.room_catch_up(TEAM[1]).await.unwrap();
        drop(lease);
    })
    .await;
}
