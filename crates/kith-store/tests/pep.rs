//! PEP nodes, items and affiliations (XEP-0163 over XEP-0060) and the XEP-0153
//! vCard photo hash, on SQLite always and on PostgreSQL when `KITH_TEST_PG_URL`
//! names an admin URL (the harness of `tests/common`).

use kith_store::{PepItem, PepNodeConfig, PepWrite, StoreError};

mod common;
use common::{TestDb, creds, run_postgres, run_sqlite};

both!(
    publish_creates_the_node_and_orders_items,
    republishing_an_id_replaces_it_and_makes_it_newest,
    max_items_trims_the_oldest,
    transient_nodes_keep_the_last_item,
    node_limit_is_enforced,
    retract_purge_delete,
    configure_changes_and_trims,
    last_items_per_node,
    affiliations_round_trip,
    nodes_go_with_the_account,
    vcard_photo_hash_round_trip,
    expired_items_are_hidden_then_swept,
    subscriptions_round_trip,
);

fn config(access: &str, max_items: i64) -> PepNodeConfig {
    PepNodeConfig {
        access_model: access.to_owned(),
        roster_groups: Vec::new(),
        max_items,
        persist_items: true,
        send_last: "on_sub_and_presence".to_owned(),
        notify_retract: true,
        title: String::new(),
        item_expire: 0,
    }
}

fn item(id: &str, payload: &str) -> PepItem {
    PepItem {
        id: id.to_owned(),
        payload: payload.to_owned(),
        publisher: "alice@localhost/phone".to_owned(),
        published_micros: 7,
    }
}

fn ids(items: &[PepItem]) -> Vec<&str> {
    items.iter().map(|i| i.id.as_str()).collect()
}

const CAP: usize = 50;

async fn publish_creates_the_node_and_orders_items(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    assert_eq!(s.pep_node("alice", "n").await.unwrap(), None);
    let first = s
        .pep_publish(
            "alice",
            "n",
            &config("open", 10),
            &item("a", "<x/>"),
            CAP,
            10,
        )
        .await
        .unwrap();
    assert_eq!(first, PepWrite::Done { node_created: true });
    let second = s
        .pep_publish(
            "alice",
            "n",
            &config("presence", 10),
            &item("b", "<y/>"),
            CAP,
            10,
        )
        .await
        .unwrap();
    assert_eq!(
        second,
        PepWrite::Done {
            node_created: false
        }
    );
    // The node keeps the configuration it was created with.
    assert_eq!(
        s.pep_node("alice", "n").await.unwrap(),
        Some(config("open", 10))
    );
    let items = s.pep_items("alice", "n", None).await.unwrap();
    assert_eq!(ids(&items), ["b", "a"]);
    assert_eq!(items[1], item("a", "<x/>"));
    assert_eq!(
        ids(&s.pep_items("alice", "n", Some(1)).await.unwrap()),
        ["b"]
    );
    let some = s
        .pep_items_by_id("alice", "n", &["a".into(), "zz".into()])
        .await
        .unwrap();
    assert_eq!(ids(&some), ["a"]);
    // Publishing for someone without an account fails.
    let missing = s
        .pep_publish(
            "nobody",
            "n",
            &config("open", 1),
            &item("a", "<x/>"),
            CAP,
            10,
        )
        .await;
    assert!(matches!(missing, Err(StoreError::NoSuchUser(_))));
}

async fn republishing_an_id_replaces_it_and_makes_it_newest(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    for (id, payload) in [("a", "1"), ("b", "2"), ("a", "3")] {
        s.pep_publish(
            "alice",
            "n",
            &config("open", 10),
            &item(id, payload),
            CAP,
            10,
        )
        .await
        .unwrap();
    }
    let items = s.pep_items("alice", "n", None).await.unwrap();
    assert_eq!(ids(&items), ["a", "b"]);
    assert_eq!(items[0].payload, "3");
}

async fn max_items_trims_the_oldest(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    for id in ["a", "b", "c", "d"] {
        s.pep_publish(
            "alice",
            "two",
            &config("open", 2),
            &item(id, "<x/>"),
            CAP,
            10,
        )
        .await
        .unwrap();
        // -1 is "max": the server's cap (3 here).
        s.pep_publish(
            "alice",
            "max",
            &config("open", -1),
            &item(id, "<x/>"),
            3,
            10,
        )
        .await
        .unwrap();
    }
    assert_eq!(
        ids(&s.pep_items("alice", "two", None).await.unwrap()),
        ["d", "c"]
    );
    assert_eq!(
        ids(&s.pep_items("alice", "max", None).await.unwrap()),
        ["d", "c", "b"]
    );
}

async fn transient_nodes_keep_the_last_item(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    let transient = PepNodeConfig {
        persist_items: false,
        ..config("presence", 10)
    };
    for id in ["a", "b"] {
        s.pep_publish("alice", "t", &transient, &item(id, "<x/>"), CAP, 10)
            .await
            .unwrap();
    }
    assert_eq!(ids(&s.pep_items("alice", "t", None).await.unwrap()), ["b"]);
}

async fn node_limit_is_enforced(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    for node in ["a", "b"] {
        s.pep_publish(
            "alice",
            node,
            &config("open", 1),
            &item("i", "<x/>"),
            CAP,
            2,
        )
        .await
        .unwrap();
    }
    let third = s
        .pep_publish("alice", "c", &config("open", 1), &item("i", "<x/>"), CAP, 2)
        .await
        .unwrap();
    assert_eq!(third, PepWrite::NodeLimitReached);
    assert_eq!(
        s.pep_create_node("alice", "c", &config("open", 1), 2)
            .await
            .unwrap(),
        PepWrite::NodeLimitReached
    );
    // Existing nodes still take items.
    let again = s
        .pep_publish("alice", "a", &config("open", 1), &item("j", "<x/>"), CAP, 2)
        .await
        .unwrap();
    assert_eq!(
        again,
        PepWrite::Done {
            node_created: false
        }
    );
    assert_eq!(
        s.pep_create_node("alice", "a", &config("open", 1), 2)
            .await
            .unwrap(),
        PepWrite::Exists
    );
    assert_eq!(s.pep_nodes("alice").await.unwrap().len(), 2);
}

async fn retract_purge_delete(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    for id in ["a", "b", "c"] {
        s.pep_publish(
            "alice",
            "n",
            &config("open", 10),
            &item(id, "<x/>"),
            CAP,
            10,
        )
        .await
        .unwrap();
    }
    assert!(s.pep_retract("alice", "n", "b").await.unwrap());
    assert!(!s.pep_retract("alice", "n", "b").await.unwrap());
    assert_eq!(
        ids(&s.pep_items("alice", "n", None).await.unwrap()),
        ["c", "a"]
    );
    assert!(s.pep_purge("alice", "n").await.unwrap());
    assert!(s.pep_items("alice", "n", None).await.unwrap().is_empty());
    assert!(s.pep_node("alice", "n").await.unwrap().is_some());
    assert!(!s.pep_purge("alice", "other").await.unwrap());
    s.pep_publish(
        "alice",
        "n",
        &config("open", 10),
        &item("d", "<x/>"),
        CAP,
        10,
    )
    .await
    .unwrap();
    assert!(s.pep_delete_node("alice", "n").await.unwrap());
    assert!(!s.pep_delete_node("alice", "n").await.unwrap());
    assert_eq!(s.pep_node("alice", "n").await.unwrap(), None);
    assert!(s.pep_items("alice", "n", None).await.unwrap().is_empty());
}

async fn configure_changes_and_trims(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    for id in ["a", "b", "c"] {
        s.pep_publish(
            "alice",
            "n",
            &config("open", 10),
            &item(id, "<x/>"),
            CAP,
            10,
        )
        .await
        .unwrap();
    }
    let mut whitelist = config("roster", 1);
    whitelist.roster_groups = vec!["Friends".into(), "Family".into()];
    whitelist.title = "Mood".into();
    assert!(
        s.pep_configure("alice", "n", &whitelist, CAP)
            .await
            .unwrap()
    );
    assert_eq!(
        s.pep_node("alice", "n").await.unwrap(),
        Some(whitelist.clone())
    );
    assert_eq!(ids(&s.pep_items("alice", "n", None).await.unwrap()), ["c"]);
    assert!(
        !s.pep_configure("alice", "none", &whitelist, CAP)
            .await
            .unwrap()
    );
}

async fn last_items_per_node(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    for (node, id) in [("x", "1"), ("x", "2"), ("y", "3")] {
        s.pep_publish(
            "alice",
            node,
            &config("open", 10),
            &item(id, "<x/>"),
            CAP,
            10,
        )
        .await
        .unwrap();
    }
    s.pep_create_node("alice", "empty", &config("open", 10), 10)
        .await
        .unwrap();
    s.create_user("bob", &creds(2)).await.unwrap();
    s.pep_publish(
        "bob",
        "x",
        &config("open", 10),
        &item("b1", "<x/>"),
        CAP,
        10,
    )
    .await
    .unwrap();
    let owners = ["bob".to_owned(), "alice".to_owned(), "carol".to_owned()];
    let last = s.pep_last_items(&owners).await.unwrap();
    let summary: Vec<(&str, &str, Option<&str>)> = last
        .iter()
        .map(|(o, n, i)| {
            (
                o.as_str(),
                n.node.as_str(),
                i.as_ref().map(|i| i.id.as_str()),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("alice", "empty", None),
            ("alice", "x", Some("2")),
            ("alice", "y", Some("3")),
            ("bob", "x", Some("b1")),
        ]
    );
    assert!(
        s.pep_last_items(&["carol".to_owned()])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.pep_last_items(&[]).await.unwrap().is_empty());
    // More owners than fit one query.
    let many: Vec<String> = (0..1200)
        .map(|n| format!("u{n}"))
        .chain(["alice".to_owned()])
        .collect();
    assert_eq!(s.pep_last_items(&many).await.unwrap().len(), 3);
}

async fn affiliations_round_trip(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    assert!(
        !s.pep_set_affiliations("alice", "n", &[("bob@localhost".into(), "member".into())])
            .await
            .unwrap()
    );
    s.pep_create_node("alice", "n", &config("whitelist", 1), 10)
        .await
        .unwrap();
    let changes = [
        ("bob@localhost".to_owned(), "member".to_owned()),
        ("carol@localhost".to_owned(), "publisher".to_owned()),
    ];
    assert!(
        s.pep_set_affiliations("alice", "n", &changes)
            .await
            .unwrap()
    );
    assert_eq!(s.pep_affiliations("alice", "n").await.unwrap(), changes);
    assert_eq!(
        s.pep_affiliation("alice", "n", "bob@localhost")
            .await
            .unwrap(),
        Some("member".to_owned())
    );
    s.pep_set_affiliations("alice", "n", &[("bob@localhost".into(), "none".into())])
        .await
        .unwrap();
    assert_eq!(
        s.pep_affiliation("alice", "n", "bob@localhost")
            .await
            .unwrap(),
        None
    );
    assert!(s.pep_delete_node("alice", "n").await.unwrap());
    assert!(s.pep_affiliations("alice", "n").await.unwrap().is_empty());
}

async fn nodes_go_with_the_account(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    s.pep_publish(
        "alice",
        "n",
        &config("whitelist", 10),
        &item("a", "<x/>"),
        CAP,
        10,
    )
    .await
    .unwrap();
    s.pep_set_affiliations("alice", "n", &[("bob@localhost".into(), "member".into())])
        .await
        .unwrap();
    assert!(s.delete_user("alice").await.unwrap());
    s.create_user("alice", &creds(2)).await.unwrap();
    assert!(s.pep_nodes("alice").await.unwrap().is_empty());
    assert!(s.pep_items("alice", "n", None).await.unwrap().is_empty());
    assert!(s.pep_affiliations("alice", "n").await.unwrap().is_empty());
}

async fn vcard_photo_hash_round_trip(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    assert_eq!(s.vcard_photo_hash("alice").await.unwrap(), None);
    // A vCard stored the old way has no hash.
    s.set_vcard("alice", "<vCard xmlns='vcard-temp'/>")
        .await
        .unwrap();
    assert_eq!(s.vcard_photo_hash("alice").await.unwrap(), None);
    s.set_vcard_with_photo(
        "alice",
        "<vCard xmlns='vcard-temp'><PHOTO/></vCard>",
        Some("abc"),
    )
    .await
    .unwrap();
    assert_eq!(
        s.vcard_photo_hash("alice").await.unwrap(),
        Some("abc".into())
    );
    assert_eq!(
        s.vcard("alice").await.unwrap().as_deref(),
        Some("<vCard xmlns='vcard-temp'><PHOTO/></vCard>")
    );
    s.set_vcard_with_photo("alice", "<vCard xmlns='vcard-temp'/>", None)
        .await
        .unwrap();
    assert_eq!(s.vcard_photo_hash("alice").await.unwrap(), None);
    assert!(matches!(
        s.set_vcard_with_photo("nobody", "<vCard xmlns='vcard-temp'/>", None)
            .await,
        Err(StoreError::NoSuchUser(_))
    ));
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64
}

async fn expired_items_are_hidden_then_swept(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    let expiring = PepNodeConfig {
        item_expire: 60,
        ..config("whitelist", 10)
    };
    let at = |id: &str, published_micros: i64| PepItem {
        published_micros,
        ..item(id, "<geoloc xmlns='http://jabber.org/protocol/geoloc'/>")
    };
    // "old" expired a minute ago; "new" has a minute to go.
    for (node, id, when) in [
        ("geo", "old", now() - 120_000_000),
        ("geo", "new", now()),
        ("gone", "only", now() - 120_000_000),
    ] {
        s.pep_publish("alice", node, &expiring, &at(id, when), CAP, 10)
            .await
            .unwrap();
    }
    assert_eq!(s.pep_node("alice", "geo").await.unwrap(), Some(expiring));
    assert_eq!(
        ids(&s.pep_items("alice", "geo", None).await.unwrap()),
        ["new"]
    );
    let by_id = s
        .pep_items_by_id("alice", "geo", &["old".into(), "new".into()])
        .await
        .unwrap();
    assert_eq!(ids(&by_id), ["new"]);
    let last = s.pep_last_items(&["alice".into()]).await.unwrap();
    let last: Vec<(&str, Option<&str>)> = last
        .iter()
        .map(|(_, n, i)| (n.node.as_str(), i.as_ref().map(|i| i.id.as_str())))
        .collect();
    assert_eq!(last, [("geo", Some("new")), ("gone", None)]);

    let mut expired = s.pep_expired(now(), 10).await.unwrap();
    expired.sort_unstable_by(|a, b| a.node.cmp(&b.node));
    let found: Vec<(&str, &str)> = expired
        .iter()
        .map(|e| (e.node.as_str(), e.item_id.as_str()))
        .collect();
    assert_eq!(found, [("geo", "old"), ("gone", "only")]);
    assert!(
        !s.pep_remove_expired("alice", "geo", "new", now())
            .await
            .unwrap()
    );
    for e in &expired {
        assert!(
            s.pep_remove_expired(&e.owner, &e.node, &e.item_id, now())
                .await
                .unwrap()
        );
    }
    assert!(s.pep_expired(now(), 10).await.unwrap().is_empty());
    // A node without item_expire never expires anything.
    s.pep_publish("alice", "keep", &config("open", 1), &at("k", 1), CAP, 10)
        .await
        .unwrap();
    assert_eq!(
        ids(&s.pep_items("alice", "keep", None).await.unwrap()),
        ["k"]
    );
    assert!(s.pep_expired(now(), 10).await.unwrap().is_empty());
    // Reconfiguring stores the new setting.
    let longer = PepNodeConfig {
        item_expire: 3600,
        ..config("open", 1)
    };
    assert!(
        s.pep_configure("alice", "keep", &longer, CAP)
            .await
            .unwrap()
    );
    assert_eq!(s.pep_node("alice", "keep").await.unwrap(), Some(longer));
}

async fn subscriptions_round_trip(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    let bob = "bob@localhost";
    assert_eq!(
        s.pep_subscribe("alice", "geo", bob, "s1").await.unwrap(),
        None
    );
    s.pep_publish(
        "alice",
        "geo",
        &config("whitelist", 1),
        &item("a", "<x/>"),
        CAP,
        10,
    )
    .await
    .unwrap();
    assert_eq!(
        s.pep_subscribe("alice", "geo", bob, "s1").await.unwrap(),
        Some("s1".to_owned())
    );
    // Subscribing again keeps the first subscription.
    assert_eq!(
        s.pep_subscribe("alice", "geo", bob, "s2").await.unwrap(),
        Some("s1".to_owned())
    );
    assert_eq!(s.pep_subscribers("alice", "geo").await.unwrap(), [bob]);
    assert_eq!(
        s.pep_subscriptions("alice", bob).await.unwrap(),
        [("geo".to_owned(), "s1".to_owned())]
    );
    assert!(
        s.pep_subscriptions("alice", "carol@localhost")
            .await
            .unwrap()
            .is_empty()
    );
    assert!(s.pep_unsubscribe("alice", "geo", bob).await.unwrap());
    assert!(!s.pep_unsubscribe("alice", "geo", bob).await.unwrap());
    assert!(s.pep_subscribers("alice", "geo").await.unwrap().is_empty());
    // Deleting the node, or the account, ends its subscriptions.
    s.pep_subscribe("alice", "geo", bob, "s3").await.unwrap();
    assert!(s.pep_delete_node("alice", "geo").await.unwrap());
    assert!(s.pep_subscriptions("alice", bob).await.unwrap().is_empty());
    s.pep_publish(
        "alice",
        "geo",
        &config("open", 1),
        &item("a", "<x/>"),
        CAP,
        10,
    )
    .await
    .unwrap();
    s.pep_subscribe("alice", "geo", bob, "s4").await.unwrap();
    assert!(s.delete_user("alice").await.unwrap());
    assert!(s.pep_subscriptions("alice", bob).await.unwrap().is_empty());
}
