//! Push registrations (XEP-0357, Web Push, webhook) and server secrets, run
//! against SQLite always and against PostgreSQL when `KITH_TEST_PG_URL` names an
//! admin URL; every PostgreSQL test gets its own database, dropped afterwards
//! (the harness of `tests/store.rs`).

use kith_store::{NewInboxEntry, PushEnabled, PushKind, PushRegistration, Store, StoreError};

// ----------------------------------------------------------------------
// harness
// ----------------------------------------------------------------------

mod common;
use common::{TestDb, creds, run_postgres, run_sqlite};

both!(
    registrations_round_trip,
    enable_replaces_and_moves_between_devices,
    limit_per_owner,
    disable_one_node_or_all,
    webpush_removal_checks_the_endpoint,
    pending_count_follows_the_device_cursor,
    registrations_go_with_the_account,
    secrets_are_created_once,
);

// ----------------------------------------------------------------------
// helpers
// ----------------------------------------------------------------------

fn app_server(resource: &str, jid: &str, node: &str) -> PushRegistration {
    PushRegistration {
        resource: resource.to_owned(),
        jid: jid.to_owned(),
        node: node.to_owned(),
        kind: PushKind::AppServer,
        options: Some("<x xmlns='jabber:x:data' type='submit'/>".to_owned()),
        created_micros: 1,
    }
}

fn web_push(resource: &str, node: &str, endpoint: &str) -> PushRegistration {
    PushRegistration {
        resource: resource.to_owned(),
        jid: "localhost".to_owned(),
        node: node.to_owned(),
        kind: PushKind::WebPush {
            endpoint: endpoint.to_owned(),
            p256dh: "BKey".to_owned(),
            auth: "auth".to_owned(),
        },
        options: None,
        created_micros: 2,
    }
}

async fn message(s: &Store, owner: &str, body: Option<&str>, direction: &str) -> i64 {
    s.inbox_append(
        owner,
        &NewInboxEntry {
            stanza_id: "",
            sender: "bob@localhost/x",
            kind: "message",
            xml: "<message xmlns='jabber:client'/>",
            at_micros: 1,
            peer: "bob@localhost",
            direction,
            body,
            origin: None,
        },
    )
    .await
    .expect("append")
}

// ----------------------------------------------------------------------
// tests
// ----------------------------------------------------------------------

async fn registrations_round_trip(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    assert!(s.push_registrations("alice").await.unwrap().is_empty());
    let one = app_server("phone", "push.example.org", "n1");
    let two = web_push("browser", "w1", "https://push.example.net/a");
    for registration in [&two, &one] {
        assert_eq!(
            s.push_enable("alice", registration, 10).await.unwrap(),
            PushEnabled::Stored
        );
    }
    assert_eq!(
        s.push_registrations("alice").await.unwrap(),
        vec![two.clone(), one.clone()],
        "sorted by jid, every field kept"
    );
    assert!(s.push_registrations("nobody").await.unwrap().is_empty());
    let missing = s.push_enable("nobody", &one, 10).await;
    assert!(
        matches!(missing, Err(StoreError::NoSuchUser(_))),
        "{missing:?}"
    );
}

async fn enable_replaces_and_moves_between_devices(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    s.push_enable("alice", &app_server("phone", "push.example.org", "n1"), 10)
        .await
        .unwrap();
    s.push_enable("alice", &app_server("tablet", "push.example.org", "n1"), 10)
        .await
        .unwrap();
    let all = s.push_registrations("alice").await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].resource, "tablet");
}

async fn limit_per_owner(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    for node in ["a", "b"] {
        assert_eq!(
            s.push_enable("alice", &app_server("r", "push.example.org", node), 2)
                .await
                .unwrap(),
            PushEnabled::Stored
        );
    }
    assert_eq!(
        s.push_enable("alice", &app_server("r", "push.example.org", "c"), 2)
            .await
            .unwrap(),
        PushEnabled::LimitReached
    );
    // Replacing an existing registration is not a new one.
    assert_eq!(
        s.push_enable("alice", &app_server("r2", "push.example.org", "a"), 2)
            .await
            .unwrap(),
        PushEnabled::Stored
    );
    assert_eq!(s.push_registrations("alice").await.unwrap().len(), 2);
}

async fn disable_one_node_or_all(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    for node in ["a", "b", "c"] {
        s.push_enable("alice", &app_server("r", "push.example.org", node), 10)
            .await
            .unwrap();
    }
    s.push_enable("alice", &app_server("r", "other.example.org", "a"), 10)
        .await
        .unwrap();
    assert_eq!(
        s.push_disable("alice", "push.example.org", Some("b"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.push_disable("alice", "push.example.org", Some("zz"))
            .await
            .unwrap(),
        0
    );
    assert_eq!(
        s.push_disable("alice", "push.example.org", None)
            .await
            .unwrap(),
        2
    );
    let left = s.push_registrations("alice").await.unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].jid, "other.example.org");
}

async fn webpush_removal_checks_the_endpoint(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    s.push_enable(
        "alice",
        &web_push("b", "w", "https://push.example.net/new"),
        10,
    )
    .await
    .unwrap();
    // A 410 for the old endpoint must not remove the newer subscription.
    assert!(
        !s.push_remove_webpush("alice", "localhost", "w", "https://push.example.net/old")
            .await
            .unwrap()
    );
    assert_eq!(s.push_registrations("alice").await.unwrap().len(), 1);
    assert!(
        s.push_remove_webpush("alice", "localhost", "w", "https://push.example.net/new")
            .await
            .unwrap()
    );
    assert!(s.push_registrations("alice").await.unwrap().is_empty());
}

async fn pending_count_follows_the_device_cursor(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    s.device_attach("alice", "phone", 1).await.unwrap();
    message(&s, "alice", Some("one"), "in").await;
    let two = message(&s, "alice", Some("two"), "in").await;
    // Receipts (no body) and the user's own sent messages don't count.
    message(&s, "alice", None, "in").await;
    message(&s, "alice", Some("mine"), "out").await;
    message(&s, "alice", Some("three"), "in").await;
    assert_eq!(
        s.push_pending_count("alice", "phone", 999).await.unwrap(),
        3
    );
    assert_eq!(
        s.push_pending_count("alice", "phone", 2).await.unwrap(),
        2,
        "capped"
    );
    s.device_ack("alice", "phone", two, 2).await.unwrap();
    assert_eq!(
        s.push_pending_count("alice", "phone", 999).await.unwrap(),
        1
    );
    // An unknown device starts at the delivered mark, like at its next login.
    assert_eq!(
        s.push_pending_count("alice", "laptop", 999).await.unwrap(),
        1
    );
    assert_eq!(s.push_pending_count("nobody", "x", 999).await.unwrap(), 0);
}

async fn registrations_go_with_the_account(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    s.push_enable("alice", &app_server("r", "push.example.org", "a"), 10)
        .await
        .unwrap();
    assert!(s.delete_user("alice").await.unwrap());
    s.create_user("alice", &creds(1)).await.unwrap();
    assert!(s.push_registrations("alice").await.unwrap().is_empty());
}

async fn secrets_are_created_once(db: TestDb) {
    let s = db.open().await;
    let first = s
        .secret_get_or_insert("vapid-p256", &[1; 32])
        .await
        .unwrap();
    assert_eq!(first, vec![1; 32]);
    let again = s
        .secret_get_or_insert("vapid-p256", &[2; 32])
        .await
        .unwrap();
    assert_eq!(again, first, "the first value stays");
    drop(s);
    let reopened = db.open().await;
    assert_eq!(
        reopened
            .secret_get_or_insert("vapid-p256", &[3; 32])
            .await
            .unwrap(),
        first
    );
}
