//! Group chat rooms (XEP-0045): rooms, affiliations, invite links and the room's
//! archive log, on SQLite always and on PostgreSQL when `KITH_TEST_PG_URL` is set.

use kith_store::{ArchiveQuery, NewInboxEntry, RoomAffiliation, RoomInvite, Store};

mod common;
use common::{TestDb, creds, run_postgres, run_sqlite};

both!(
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

async fn group_message_fans_out_in_one_commit(db: TestDb) {
    let store = store_with_users(&db, &["alice", "bob", "carol"]).await;
    store
        .muc_create_room(ROOM, "", "alice@localhost", 1)
        .await
        .unwrap();
    let xml = "<message xmlns='jabber:client' type='groupchat'><body>hello team</body></message>";
    let entries: Vec<(&str, NewInboxEntry)> = vec![
        (ROOM, entry(xml, "room-id-1", "hello team")),
        ("alice", entry(xml, "", "hello team")),
        ("bob", entry(xml, "", "hello team")),
        ("carol", entry(xml, "", "hello team")),
    ];
    let results = store.inbox_append_all(&entries).await.unwrap();
    assert!(results.iter().all(|r| r.is_ok()));
    for owner in ["bob", "carol"] {
        let got = store.inbox_after(owner, 0, 10).await.unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].xml, xml);
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
    assert_eq!(page.items[0].stanza_id, "room-id-1");
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
    assert!(store.muc_destroy_room(ROOM).await.unwrap());
    assert!(store.muc_room(ROOM).await.unwrap().is_none());
    assert!(store.muc_invite("t").await.unwrap().is_none());
    assert!(store.muc_affiliations(ROOM).await.unwrap().is_empty());
    assert_eq!(store.inbox_count(ROOM).await.unwrap(), 0);
    assert!(!store.muc_destroy_room(ROOM).await.unwrap());
    // The name is free again.
    assert!(
        store
            .muc_create_room(ROOM, "", "alice@localhost", 2)
            .await
            .unwrap()
    );
}

both!(large_fan_out_gives_each_owner_the_next_number);

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
