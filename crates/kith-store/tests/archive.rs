//! The archive view of the inbox log (XEP-0313 queries, XEP-0431 full-text
//! search, XEP-0441 preferences), run against SQLite always and against
//! PostgreSQL when `KITH_TEST_PG_URL` names an admin URL (e.g.
//! `postgres://postgres@127.0.0.1:55432/postgres`); every PostgreSQL test gets
//! its own database, dropped afterwards (the harness of `tests/store.rs`).
//!
//! The full-text tests compare each engine with the same plain-Rust oracle, so
//! passing on both means both engines return the same hits.

use kith_store::{
    ArchiveDefault, ArchiveError, ArchiveQuery, MamPrefs, NewInboxEntry, Paging, Store, StoreError,
};

// ----------------------------------------------------------------------
// harness
// ----------------------------------------------------------------------

mod common;
use common::{TestDb, creds, run_postgres, run_sqlite, run_sqlite_archive, run_sqlite_tail};

all_three!(
    paging_forwards,
    paging_backwards,
    unknown_ids_are_errors,
    filter_with,
    a_conversation_spans_buckets_of_the_log,
    a_rare_conversation_spans_many_buckets,
    filter_time,
    filter_ids_and_id_bounds,
    ids_of_every_form,
    fulltext_unicode,
    fulltext_hostile_input,
    fulltext_follows_deletes_and_updates,
    fulltext_index_catches_up,
    corpus_search_matches_the_oracle,
    archive_bounds,
    prefs_round_trip,
);

// ----------------------------------------------------------------------
// helpers
// ----------------------------------------------------------------------

/// One message for the helpers below.
struct Msg<'a> {
    id: &'a str,
    peer: &'a str,
    sender: &'a str,
    direction: &'a str,
    body: Option<&'a str>,
    at: i64,
}

async fn append(s: &Store, owner: &str, m: &Msg<'_>) -> i64 {
    let xml = format!("<message xmlns='jabber:client' id='{}'/>", m.id);
    s.inbox_append(
        owner,
        &NewInboxEntry {
            stanza_id: m.id,
            sender: m.sender,
            kind: "chat",
            xml: &xml,
            at_micros: m.at,
            peer: m.peer,
            direction: m.direction,
            body: m.body,
            origin: None,
        },
    )
    .await
    .expect("append")
}

/// `n` incoming messages `m01…` from bob, at times 1000, 2000, …
async fn fill(s: &Store, owner: &str, n: usize) {
    for i in 1..=n {
        let id = format!("m{i:02}");
        let body = format!("message number {i}");
        append(
            s,
            owner,
            &Msg {
                id: &id,
                peer: "bob@example.org",
                sender: "bob@example.org/phone",
                direction: "in",
                body: Some(&body),
                at: i as i64 * 1000,
            },
        )
        .await;
    }
}

fn ids(page: &kith_store::ArchivePage) -> Vec<&str> {
    page.items.iter().map(|e| e.stanza_id.as_str()).collect()
}

fn range(from: usize, to: usize) -> Vec<String> {
    (from..=to).map(|i| format!("m{i:02}")).collect()
}

fn query(max: i64) -> ArchiveQuery {
    ArchiveQuery {
        max,
        ..ArchiveQuery::default()
    }
}

async fn search(s: &Store, owner: &str, text: &str) -> Vec<String> {
    let page = s
        .archive_query(
            owner,
            &ArchiveQuery {
                fulltext: Some(text.to_owned()),
                ..query(1000)
            },
        )
        .await
        .unwrap_or_else(|e| panic!("search {text:?}: {e}"));
    assert_eq!(
        page.count,
        Some(page.items.len() as i64),
        "count of {text:?}"
    );
    page.items.into_iter().map(|e| e.stanza_id).collect()
}

// ----------------------------------------------------------------------
// tests
// ----------------------------------------------------------------------

async fn paging_forwards(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    fill(&s, "alice", 25).await;

    let p1 = s.archive_query("alice", &query(10)).await.unwrap();
    assert_eq!(ids(&p1), range(1, 10));
    assert!(!p1.complete);
    assert_eq!(p1.count, Some(25));
    assert_eq!(p1.first.as_deref(), Some("m01"));
    assert_eq!(p1.last.as_deref(), Some("m10"));
    assert_eq!(p1.items[0].body.as_deref(), Some("message number 1"));
    assert_eq!(p1.items[0].peer, "bob@example.org");
    assert_eq!(p1.items[0].at_micros, 1000);

    let next = |after: Option<String>| ArchiveQuery {
        paging: Paging::After(after),
        ..query(10)
    };
    let p2 = s
        .archive_query("alice", &next(p1.last.clone()))
        .await
        .unwrap();
    assert_eq!(ids(&p2), range(11, 20));
    assert!(!p2.complete);
    let p3 = s
        .archive_query("alice", &next(p2.last.clone()))
        .await
        .unwrap();
    assert_eq!(ids(&p3), range(21, 25));
    assert!(p3.complete);
    assert_eq!(p3.count, Some(25));
    // Past the end: an empty, complete page.
    let p4 = s
        .archive_query("alice", &next(p3.last.clone()))
        .await
        .unwrap();
    assert!(p4.items.is_empty());
    assert!(p4.complete);
    assert_eq!((p4.first, p4.last), (None, None));

    // A page exactly as large as what is left is complete.
    let exact = s
        .archive_query(
            "alice",
            &ArchiveQuery {
                paging: Paging::After(Some("m15".into())),
                ..query(10)
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&exact), range(16, 25));
    assert!(exact.complete);

    // max 0 only counts; negative max counts as 0.
    for max in [0, -5] {
        let counted = s.archive_query("alice", &query(max)).await.unwrap();
        assert!(counted.items.is_empty());
        assert_eq!(counted.count, Some(25));
        assert!(!counted.complete);
    }
    // A huge max is no problem.
    let all = s.archive_query("alice", &query(i64::MAX)).await.unwrap();
    assert_eq!(ids(&all), range(1, 25));
    assert!(all.complete);

    // An empty archive, and an owner without an account.
    for owner in ["nobody", "carol"] {
        if owner == "carol" {
            s.create_user("carol", &creds(1)).await.unwrap();
        }
        let empty = s.archive_query(owner, &query(10)).await.unwrap();
        assert!(empty.items.is_empty());
        assert!(empty.complete);
        assert_eq!(empty.count, Some(0));
    }
}

async fn paging_backwards(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    fill(&s, "alice", 25).await;

    let back = |before: Option<String>| ArchiveQuery {
        paging: Paging::Before(before),
        ..query(10)
    };
    // The last page, still oldest first.
    let p1 = s.archive_query("alice", &back(None)).await.unwrap();
    assert_eq!(ids(&p1), range(16, 25));
    assert!(!p1.complete);
    assert_eq!(p1.first.as_deref(), Some("m16"));
    assert_eq!(p1.last.as_deref(), Some("m25"));
    assert_eq!(p1.count, Some(25));
    let p2 = s
        .archive_query("alice", &back(p1.first.clone()))
        .await
        .unwrap();
    assert_eq!(ids(&p2), range(6, 15));
    assert!(!p2.complete);
    let p3 = s
        .archive_query("alice", &back(p2.first.clone()))
        .await
        .unwrap();
    assert_eq!(ids(&p3), range(1, 5));
    assert!(p3.complete);
    let p4 = s
        .archive_query("alice", &back(p3.first.clone()))
        .await
        .unwrap();
    assert!(p4.items.is_empty());
    assert!(p4.complete);

    // Backwards within a filter: the last page of bob's messages before m20.
    let filtered = s
        .archive_query(
            "alice",
            &ArchiveQuery {
                start_micros: Some(12_000),
                ..back(Some("m20".into()))
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&filtered), range(12, 19));
    assert!(filtered.complete);
    assert_eq!(filtered.count, Some(14));
}

async fn unknown_ids_are_errors(db: TestDb) {
    let s = db.open().await;
    for user in ["alice", "bob"] {
        s.create_user(user, &creds(1)).await.unwrap();
    }
    fill(&s, "alice", 3).await;
    append(
        &s,
        "bob",
        &Msg {
            id: "bobs-own",
            peer: "alice@example.org",
            sender: "alice@example.org/a",
            direction: "in",
            body: Some("hi"),
            at: 1,
        },
    )
    .await;

    let unknown = |q: ArchiveQuery, what: &str| {
        let s = s.clone();
        let what = what.to_owned();
        async move {
            match s.archive_query("alice", &q).await {
                Err(ArchiveError::UnknownId(id)) => id,
                other => panic!("{what}: expected UnknownId, got {other:?}"),
            }
        }
    };
    let cases = [
        (
            ArchiveQuery {
                paging: Paging::After(Some("nope".into())),
                ..query(10)
            },
            "rsm after",
            "nope",
        ),
        (
            ArchiveQuery {
                paging: Paging::Before(Some("nope".into())),
                ..query(10)
            },
            "rsm before",
            "nope",
        ),
        (
            ArchiveQuery {
                after_id: Some("nope".into()),
                ..query(10)
            },
            "after-id",
            "nope",
        ),
        (
            ArchiveQuery {
                before_id: Some("nope".into()),
                ..query(10)
            },
            "before-id",
            "nope",
        ),
        (
            ArchiveQuery {
                ids: vec!["m01".into(), "nope".into()],
                ..query(10)
            },
            "ids",
            "nope",
        ),
        // Another user's archive id is unknown in this archive.
        (
            ArchiveQuery {
                paging: Paging::After(Some("bobs-own".into())),
                ..query(10)
            },
            "someone else's id",
            "bobs-own",
        ),
        (
            ArchiveQuery {
                ids: vec!["".into()],
                ..query(10)
            },
            "empty id",
            "",
        ),
    ];
    for (q, what, id) in cases {
        assert_eq!(unknown(q, what).await, id, "{what}");
    }
    // Unknown ids are errors even when other filters match nothing.
    assert!(matches!(
        s.archive_query(
            "alice",
            &ArchiveQuery {
                with: Some("nobody@example.org".into()),
                paging: Paging::After(Some("nope".into())),
                ..query(10)
            }
        )
        .await,
        Err(ArchiveError::UnknownId(_))
    ));
}

/// A conversation rarer still: 10 entries with dave over 15 buckets of a
/// 60,000-entry log, so a page asks the first buckets one by one and, on
/// SQLite, the rest in one statement (`archive::walk_buckets`): pages both
/// ways, from the ends and from an id, and the newest-first look-up, find
/// exactly his, in order.
async fn a_rare_conversation_spans_many_buckets(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    let raw = db.raw().await;
    sqlx::query(
        "WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 60000)
         INSERT INTO inbox (owner, seq, stanza_id, sender, kind, xml, at_micros, peer,
            direction, body)
         SELECT 'alice', i, 'x' || i, 'someone', 'chat', '<message/>', i,
            CASE WHEN i % 6000 = 0 THEN 'dave@localhost' ELSE 'bob@localhost' END,
            'in', NULL
         FROM n",
    )
    .execute(&raw)
    .await
    .unwrap();
    let dave = |paging: Paging, max: i64| ArchiveQuery {
        with: Some("dave@localhost".to_owned()),
        paging,
        max,
        ..ArchiveQuery::default()
    };
    let seqs =
        |page: &kith_store::ArchivePage| -> Vec<i64> { page.items.iter().map(|e| e.seq).collect() };
    let his = |from: i64, to: i64| -> Vec<i64> { (from..=to).map(|k| k * 6000).collect() };

    let page = s
        .archive_query("alice", &dave(Paging::Before(None), 7))
        .await
        .unwrap();
    assert_eq!(seqs(&page), his(4, 10));
    assert_eq!(page.count, Some(10));
    assert!(!page.complete);
    let page = s
        .archive_query("alice", &dave(Paging::Before(Some("x24000".into())), 7))
        .await
        .unwrap();
    assert_eq!(seqs(&page), his(1, 3));
    assert!(page.complete);
    let page = s
        .archive_query("alice", &dave(Paging::After(None), 7))
        .await
        .unwrap();
    assert_eq!(seqs(&page), his(1, 7));
    assert!(!page.complete);
    let page = s
        .archive_query("alice", &dave(Paging::After(Some("x12000".into())), 5))
        .await
        .unwrap();
    assert_eq!(seqs(&page), his(3, 7));
    assert!(!page.complete);
    let page = s
        .archive_query("alice", &dave(Paging::After(Some("x42000".into())), 5))
        .await
        .unwrap();
    assert_eq!(seqs(&page), his(8, 10));
    assert!(page.complete);

    let recent = s
        .inbox_recent_with("alice", "dave@localhost", "in", 9)
        .await
        .unwrap();
    let recent: Vec<i64> = recent.iter().map(|e| e.seq).collect();
    let mut newest_first = his(2, 10);
    newest_first.reverse();
    assert_eq!(recent, newest_first);
}

/// The conversation index is kept in buckets of 4,096 of the owner's numbers
/// (migration 48); a query by conversation walks them. A log of 10,000
/// entries, every thousandth with carol (so hers lie in buckets 0, 1 and 2,
/// with buckets holding none of them between the bounds of some queries):
/// counts, pages in both directions across buckets, id bounds and the
/// newest-first look-up of a retraction find exactly hers.
async fn a_conversation_spans_buckets_of_the_log(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    let raw = db.raw().await;
    sqlx::query(
        "WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000)
         INSERT INTO inbox (owner, seq, stanza_id, sender, kind, xml, at_micros, peer,
            direction, body)
         SELECT 'alice', i, 'x' || i, 'someone', 'chat', '<message/>', i,
            CASE WHEN i % 1000 = 0 THEN 'carol@localhost' ELSE 'bob@localhost' END,
            'in', CASE WHEN i % 500 = 0 THEN 'plum ' || i END
         FROM n",
    )
    .execute(&raw)
    .await
    .unwrap();
    let carol = |paging: Paging, max: i64| ArchiveQuery {
        with: Some("carol@localhost".to_owned()),
        paging,
        max,
        ..ArchiveQuery::default()
    };
    let seqs =
        |page: &kith_store::ArchivePage| -> Vec<i64> { page.items.iter().map(|e| e.seq).collect() };
    let before = |id: Option<&str>| Paging::Before(id.map(str::to_owned));
    let after = |id: Option<&str>| Paging::After(id.map(str::to_owned));

    let page = s
        .archive_query("alice", &carol(before(None), 3))
        .await
        .unwrap();
    assert_eq!(seqs(&page), [8000, 9000, 10000]);
    assert_eq!(page.count, Some(10));
    assert!(!page.complete);
    let page = s
        .archive_query("alice", &carol(before(Some("x8000")), 3))
        .await
        .unwrap();
    assert_eq!(seqs(&page), [5000, 6000, 7000]);
    assert_eq!(page.count, Some(10), "the count ignores the page position");
    let page = s
        .archive_query("alice", &carol(before(Some("x2000")), 3))
        .await
        .unwrap();
    assert_eq!(seqs(&page), [1000]);
    assert!(page.complete);

    let page = s
        .archive_query("alice", &carol(after(None), 4))
        .await
        .unwrap();
    assert_eq!(seqs(&page), [1000, 2000, 3000, 4000]);
    assert!(!page.complete);
    let page = s
        .archive_query("alice", &carol(after(Some("x4000")), 4))
        .await
        .unwrap();
    assert_eq!(seqs(&page), [5000, 6000, 7000, 8000]);
    assert!(!page.complete);
    let page = s
        .archive_query("alice", &carol(after(Some("x8000")), 4))
        .await
        .unwrap();
    assert_eq!(seqs(&page), [9000, 10000]);
    assert!(page.complete);

    // Id bounds narrow the count too: 4000 … 8000.
    let bounded = ArchiveQuery {
        after_id: Some("x3000".to_owned()),
        before_id: Some("x9000".to_owned()),
        ..carol(after(None), 10)
    };
    let page = s.archive_query("alice", &bounded).await.unwrap();
    assert_eq!(seqs(&page), [4000, 5000, 6000, 7000, 8000]);
    assert_eq!(page.count, Some(5));
    assert!(page.complete);
    // Bounds inside one bucket, holding none of hers.
    let empty = ArchiveQuery {
        after_id: Some("x4100".to_owned()),
        before_id: Some("x4200".to_owned()),
        ..carol(before(None), 10)
    };
    let page = s.archive_query("alice", &empty).await.unwrap();
    assert!(page.items.is_empty());
    assert_eq!(page.count, Some(0));
    assert!(page.complete);

    // Counting only; the rest of the log; a stranger.
    let page = s
        .archive_query("alice", &carol(after(None), 0))
        .await
        .unwrap();
    assert_eq!(
        (page.items.len(), page.count, page.complete),
        (0, Some(10), false)
    );
    let bob = ArchiveQuery {
        with: Some("bob@localhost".to_owned()),
        ..carol(before(None), 2)
    };
    let page = s.archive_query("alice", &bob).await.unwrap();
    assert_eq!(seqs(&page), [9998, 9999]);
    assert_eq!(page.count, Some(9990));
    let dave = ArchiveQuery {
        with: Some("dave@localhost".to_owned()),
        ..carol(before(None), 5)
    };
    let page = s.archive_query("alice", &dave).await.unwrap();
    assert!(page.items.is_empty());
    assert_eq!(page.count, Some(0));
    assert!(page.complete);

    // With words to find, or ids: still only hers.
    let plums = ArchiveQuery {
        fulltext: Some("plum".to_owned()),
        ..carol(before(None), 3)
    };
    let page = s.archive_query("alice", &plums).await.unwrap();
    assert_eq!(seqs(&page), [8000, 9000, 10000]);
    assert_eq!(page.count, Some(10));
    let plums = ArchiveQuery {
        fulltext: Some("plum 7000".to_owned()),
        ..carol(before(None), 3)
    };
    let page = s.archive_query("alice", &plums).await.unwrap();
    assert_eq!(seqs(&page), [7000]);
    let some = ArchiveQuery {
        ids: vec!["x3000".to_owned(), "x4500".to_owned()],
        ..carol(after(None), 10)
    };
    let page = s.archive_query("alice", &some).await.unwrap();
    assert_eq!(seqs(&page), [3000]);
    assert_eq!(page.count, Some(1));

    // A retraction looks for the newest few, newest first.
    let recent = s
        .inbox_recent_with("alice", "carol@localhost", "in", 4)
        .await
        .unwrap();
    let recent: Vec<i64> = recent.iter().map(|e| e.seq).collect();
    assert_eq!(recent, [10000, 9000, 8000, 7000]);
    let all = s
        .inbox_recent_with("alice", "carol@localhost", "in", 50)
        .await
        .unwrap();
    assert_eq!(all.len(), 10);
    assert!(
        s.inbox_recent_with("alice", "carol@localhost", "out", 5)
            .await
            .unwrap()
            .is_empty()
    );
}

async fn filter_with(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    let msgs = [
        Msg {
            id: "a1",
            peer: "bob@example.org",
            sender: "bob@example.org/phone",
            direction: "in",
            body: Some("one"),
            at: 1,
        },
        Msg {
            id: "a2",
            peer: "bob@example.org",
            sender: "alice@example.org/laptop",
            direction: "out",
            body: Some("two"),
            at: 2,
        },
        Msg {
            id: "a3",
            peer: "carol@example.org",
            sender: "carol@example.org/desk",
            direction: "in",
            body: Some("three"),
            at: 3,
        },
        Msg {
            id: "a4",
            peer: "bob@example.org",
            sender: "bob@example.org/tablet",
            direction: "in",
            body: Some("four"),
            at: 4,
        },
        Msg {
            id: "a5",
            peer: "alice@example.org",
            sender: "alice@example.org/laptop",
            direction: "out",
            body: Some("note to self"),
            at: 5,
        },
    ];
    for m in &msgs {
        append(&s, "alice", m).await;
    }
    // A log entry without an archive id is not part of the archive.
    append(
        &s,
        "alice",
        &Msg {
            id: "",
            peer: "bob@example.org",
            sender: "bob@example.org/phone",
            direction: "in",
            body: Some("one"),
            at: 6,
        },
    )
    .await;

    let with = |jid: &str| ArchiveQuery {
        with: Some(jid.to_owned()),
        ..query(100)
    };
    let page = s
        .archive_query("alice", &with("bob@example.org"))
        .await
        .unwrap();
    assert_eq!(ids(&page), ["a1", "a2", "a4"]);
    assert_eq!(page.count, Some(3));
    assert!(page.complete);
    let page = s
        .archive_query("alice", &with("bob@example.org/tablet"))
        .await
        .unwrap();
    assert_eq!(ids(&page), ["a4"]);
    let page = s
        .archive_query("alice", &with("carol@example.org"))
        .await
        .unwrap();
    assert_eq!(ids(&page), ["a3"]);
    // Messages to oneself: `with` the own bare JID.
    let page = s
        .archive_query("alice", &with("alice@example.org"))
        .await
        .unwrap();
    assert_eq!(ids(&page), ["a5"]);
    let page = s
        .archive_query("alice", &with("dave@example.org"))
        .await
        .unwrap();
    assert!(page.items.is_empty());
    assert_eq!(page.count, Some(0));
    // Everything: the entry without an id is left out.
    let page = s.archive_query("alice", &query(100)).await.unwrap();
    assert_eq!(ids(&page), ["a1", "a2", "a3", "a4", "a5"]);
    // `with` combined with full-text search and paging.
    let page = s
        .archive_query(
            "alice",
            &ArchiveQuery {
                fulltext: Some("one".into()),
                ..with("bob@example.org")
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&page), ["a1"]);
    let page = s
        .archive_query(
            "alice",
            &ArchiveQuery {
                paging: Paging::After(Some("a1".into())),
                max: 1,
                ..with("bob@example.org")
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&page), ["a2"]);
    assert!(!page.complete);
    assert_eq!(page.count, Some(3));
}

async fn filter_time(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    fill(&s, "alice", 10).await;
    let window = |start: Option<i64>, end: Option<i64>| ArchiveQuery {
        start_micros: start,
        end_micros: end,
        ..query(100)
    };
    // Both bounds are inclusive.
    let page = s
        .archive_query("alice", &window(Some(3000), Some(6000)))
        .await
        .unwrap();
    assert_eq!(ids(&page), range(3, 6));
    assert_eq!(page.count, Some(4));
    let page = s
        .archive_query("alice", &window(Some(3001), Some(5999)))
        .await
        .unwrap();
    assert_eq!(ids(&page), range(4, 5));
    let page = s
        .archive_query("alice", &window(Some(9000), None))
        .await
        .unwrap();
    assert_eq!(ids(&page), range(9, 10));
    let page = s
        .archive_query("alice", &window(None, Some(1000)))
        .await
        .unwrap();
    assert_eq!(ids(&page), range(1, 1));
    let page = s
        .archive_query("alice", &window(Some(7000), Some(2000)))
        .await
        .unwrap();
    assert!(page.items.is_empty());
    assert!(page.complete);
    // Order is the log's, even when times are not monotonic.
    append(
        &s,
        "alice",
        &Msg {
            id: "late",
            peer: "bob@example.org",
            sender: "bob@example.org/phone",
            direction: "in",
            body: None,
            at: 500,
        },
    )
    .await;
    let page = s
        .archive_query("alice", &window(None, Some(1000)))
        .await
        .unwrap();
    assert_eq!(ids(&page), ["m01", "late"]);
}

async fn filter_ids_and_id_bounds(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    fill(&s, "alice", 20).await;

    // `ids`: exactly those, in log order, duplicates ignored.
    let page = s
        .archive_query(
            "alice",
            &ArchiveQuery {
                ids: vec!["m07".into(), "m02".into(), "m07".into(), "m19".into()],
                ..query(100)
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&page), ["m02", "m07", "m19"]);
    assert_eq!(page.count, Some(3));
    assert!(page.complete);

    // `after-id` and `before-id` bound the result set (both exclusive)...
    let between = ArchiveQuery {
        after_id: Some("m05".into()),
        before_id: Some("m16".into()),
        ..query(4)
    };
    let page = s.archive_query("alice", &between).await.unwrap();
    assert_eq!(ids(&page), range(6, 9));
    assert_eq!(page.count, Some(10));
    assert!(!page.complete);
    // ...and RSM pages within them, forwards...
    let page = s
        .archive_query(
            "alice",
            &ArchiveQuery {
                paging: Paging::After(Some("m13".into())),
                ..between.clone()
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&page), range(14, 15));
    assert!(page.complete);
    // ...and backwards.
    let page = s
        .archive_query(
            "alice",
            &ArchiveQuery {
                paging: Paging::Before(None),
                ..between.clone()
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&page), range(12, 15));
    assert!(!page.complete);
    // `before-id` alone does not page backwards (XEP-0313 §9).
    let page = s
        .archive_query(
            "alice",
            &ArchiveQuery {
                before_id: Some("m10".into()),
                ..query(3)
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&page), range(1, 3));
}

/// Ids of today's form name their entry's time and are found through it
/// (`kith_store::archive_id`); ids of earlier forms (20 characters) and any
/// other are found through the index by id. Both kinds in one log, every way
/// an id is used.
async fn ids_of_every_form(db: TestDb) {
    let s = db.open().await;
    for user in ["alice", "bob"] {
        s.create_user(user, &creds(1)).await.unwrap();
    }
    let at = |i: usize| 1_796_000_000_000_000 + i as i64 * 1000;
    let id_of = |i: usize| match i % 3 {
        0 => kith_store::archive_id(at(i), &format!("{i:012}")),
        1 => format!("0A1b2C3d4e{i:010}"),
        _ => format!("old-{i}"),
    };
    let all: Vec<String> = (1..=12).map(id_of).collect();
    for (i, id) in (1..=12).zip(&all) {
        for owner in ["alice", "bob"] {
            append(
                &s,
                owner,
                &Msg {
                    id,
                    peer: "carol@example.org",
                    sender: "carol@example.org/phone",
                    direction: "in",
                    body: Some("hello"),
                    at: at(i),
                },
            )
            .await;
        }
    }
    for (i, id) in all.iter().enumerate() {
        let after = s
            .archive_query(
                "alice",
                &ArchiveQuery {
                    after_id: Some(id.clone()),
                    ..query(100)
                },
            )
            .await
            .unwrap_or_else(|e| panic!("after {id}: {e}"));
        assert_eq!(ids(&after), all[i + 1..], "after {id}");
        let page = s
            .archive_query(
                "alice",
                &ArchiveQuery {
                    paging: Paging::Before(Some(id.clone())),
                    ..query(2)
                },
            )
            .await
            .unwrap_or_else(|e| panic!("page before {id}: {e}"));
        assert_eq!(ids(&page), all[i.saturating_sub(2)..i], "page before {id}");
    }
    let wanted = [
        all[2].clone(),
        all[3].clone(),
        all[4].clone(),
        all[8].clone(),
    ];
    let page = s
        .archive_query(
            "alice",
            &ArchiveQuery {
                ids: wanted.to_vec(),
                ..query(100)
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&page), wanted);
    assert_eq!(page.count, Some(4));

    // Not in the archive: today's form with another time or other random
    // characters, an earlier form, anything else.
    let unknown = [
        kith_store::archive_id(at(3) + 1, "000000000003"),
        kith_store::archive_id(at(3), "000000000004"),
        "0A1b2C3d4e9999999999".to_owned(),
        "x".repeat(21),
    ];
    for id in unknown {
        for query in [
            ArchiveQuery {
                after_id: Some(id.clone()),
                ..query(10)
            },
            ArchiveQuery {
                ids: vec![all[0].clone(), id.clone()],
                ..query(10)
            },
        ] {
            match s.archive_query("alice", &query).await {
                Err(ArchiveError::UnknownId(missing)) => assert_eq!(missing, id),
                other => panic!("{id}: expected UnknownId, got {other:?}"),
            }
        }
    }
}

async fn fulltext_unicode(db: TestDb) {
    let s = db.open().await;
    for user in ["alice", "bob"] {
        s.create_user(user, &creds(1)).await.unwrap();
    }
    let bodies: [(&str, Option<&str>); 9] = [
        ("t1", Some("Hello world")),
        ("t2", Some("Привет, мир! Как дела?")),
        ("t3", Some("Ünïcödé café crème brûlée")),
        ("t4", Some("日本語テキスト です")),
        ("t5", Some("emoji 🎉 party 🎉")),
        ("t6", None),
        ("t7", Some("HELLO again, hello")),
        ("t8", Some("Ἀθῆναι ελληνικά Ärger")),
        ("t9", Some("cafe without accent")),
    ];
    for (i, (id, body)) in bodies.iter().enumerate() {
        append(
            &s,
            "alice",
            &Msg {
                id,
                peer: "bob@example.org",
                sender: "bob@example.org/phone",
                direction: "in",
                body: *body,
                at: i as i64,
            },
        )
        .await;
    }
    // The same words in bob's archive must never show up in alice's results.
    append(
        &s,
        "bob",
        &Msg {
            id: "b1",
            peer: "alice@example.org",
            sender: "alice@example.org/a",
            direction: "out",
            body: Some("Hello world Привет"),
            at: 1,
        },
    )
    .await;

    let cases: &[(&str, &[&str])] = &[
        ("hello", &["t1", "t7"]),
        ("HELLO", &["t1", "t7"]),
        ("Hello World", &["t1"]),
        ("world hello", &["t1"]),
        ("привет", &["t2"]),
        ("ПРИВЕТ мир", &["t2"]),
        ("дела", &["t2"]),
        ("café", &["t3"]),
        ("CAFÉ", &["t3"]),
        ("cafe", &["t9"]),
        ("brûlée", &["t3"]),
        ("ünïcödé", &["t3"]),
        ("日本語テキスト", &["t4"]),
        ("party", &["t5"]),
        ("ärger", &["t8"]),
        ("ελληνικά", &["t8"]),
        ("absent", &[]),
        ("hello absent", &[]),
    ];
    for (text, expected) in cases {
        assert_eq!(
            search(&s, "alice", text).await,
            *expected,
            "search {text:?}"
        );
    }
    assert_eq!(search(&s, "bob", "hello").await, ["b1"]);

    // Full-text paging: one hit per page.
    let page = s
        .archive_query(
            "alice",
            &ArchiveQuery {
                fulltext: Some("hello".into()),
                ..query(1)
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&page), ["t1"]);
    assert!(!page.complete);
    assert_eq!(page.count, Some(2));
    let page = s
        .archive_query(
            "alice",
            &ArchiveQuery {
                fulltext: Some("hello".into()),
                paging: Paging::After(page.last.clone()),
                ..query(1)
            },
        )
        .await
        .unwrap();
    assert_eq!(ids(&page), ["t7"]);
    assert!(page.complete);
}

async fn fulltext_hostile_input(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    let bodies = [
        ("h1", "she said \"hi\" and left"),
        ("h2", "wildcard * star"),
        ("h3", "near the NEAR operator"),
        ("h4", "it's o'clock"),
        ("h5", "body:column filter ^caret"),
        ("h6", "plain words only"),
    ];
    for (i, (id, body)) in bodies.iter().enumerate() {
        append(
            &s,
            "alice",
            &Msg {
                id,
                peer: "bob@example.org",
                sender: "bob@example.org/phone",
                direction: "in",
                body: Some(body),
                at: i as i64,
            },
        )
        .await;
    }
    let cases: &[(&str, &[&str])] = &[
        // Punctuation alone has no words: nothing matches, nothing fails.
        ("\"", &[]),
        ("*", &[]),
        ("'", &[]),
        ("\" * ' ( ) : ^ - + ~ & | ! @ # $ % \\", &[]),
        ("", &[]),
        ("   ", &[]),
        // Operators are plain words.
        ("NEAR", &["h3"]),
        ("near", &["h3"]),
        // A word with punctuation inside is a phrase of its parts.
        ("NEAR(near operator)", &[]),
        ("NEAR(the operator)", &["h3"]),
        ("words OR hi", &[]),
        ("words AND only", &[]),
        ("NOT plain", &[]),
        // Quotes, stars and column syntax are not syntax.
        ("\"hi\"", &["h1"]),
        ("\"hi", &["h1"]),
        ("hi\"", &["h1"]),
        ("wild*", &[]),
        ("wildcard*", &["h2"]),
        ("body:column", &["h5"]),
        ("^caret", &["h5"]),
        ("it's", &["h4"]),
        ("o'clock", &["h4"]),
        ("'; DROP TABLE inbox; --", &[]),
        ("plain -words", &["h6"]),
    ];
    for (text, expected) in cases {
        assert_eq!(
            search(&s, "alice", text).await,
            *expected,
            "search {text:?}"
        );
    }
    // Still all there.
    assert_eq!(
        s.archive_query("alice", &query(100))
            .await
            .unwrap()
            .items
            .len(),
        6
    );
}

/// SQLite indexes new entries after their commit (`batch::sqlite`): whatever
/// happens between commit and indexing — an edit, the newest row deleted and its
/// rowid handed out again, a restart — search finds what the log holds.
async fn fulltext_index_catches_up(db: TestDb) {
    let msg = |id: &'static str, body: &'static str| Msg {
        id,
        peer: "bob@example.org",
        sender: "bob@example.org/phone",
        direction: "in",
        body: Some(body),
        at: 1,
    };
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    append(&s, "alice", &msg("d0", "kiwi one")).await;
    assert_eq!(search(&s, "alice", "kiwi").await, ["d0"]);

    // Edited right after its commit, before or after its indexing pass (read
    // first: with the log's tail on, an entry reaches `inbox`, where a raw
    // statement finds it, when a read of its owner's log settles it).
    append(&s, "alice", &msg("d1", "kiwi two")).await;
    s.inbox_after("alice", 0, 10).await.unwrap();
    let raw = db.raw().await;
    sqlx::query("UPDATE inbox SET body = $1 WHERE owner = $2 AND stanza_id = $3")
        .bind("mango")
        .bind("alice")
        .bind("d1")
        .execute(&raw)
        .await
        .unwrap();
    assert_eq!(search(&s, "alice", "kiwi").await, ["d0"]);
    assert_eq!(search(&s, "alice", "mango").await, ["d1"]);

    // The newest row goes; SQLite may give its rowid to the next one.
    sqlx::query("DELETE FROM inbox WHERE owner = $1 AND stanza_id = $2")
        .bind("alice")
        .bind("d1")
        .execute(&raw)
        .await
        .unwrap();
    append(&s, "alice", &msg("d2", "papaya")).await;
    assert!(search(&s, "alice", "mango").await.is_empty());
    assert_eq!(search(&s, "alice", "papaya").await, ["d2"]);

    // Committed, then the store closes at once; the next one finds it.
    append(&s, "alice", &msg("d3", "guava")).await;
    s.close().await;
    drop(s);
    raw.close().await;
    let s = db.open().await;
    assert_eq!(search(&s, "alice", "guava").await, ["d3"]);
    assert_eq!(search(&s, "alice", "kiwi").await, ["d0"]);
}

async fn fulltext_follows_deletes_and_updates(db: TestDb) {
    let s = db.open().await;
    for user in ["alice", "bob"] {
        s.create_user(user, &creds(1)).await.unwrap();
    }
    for (i, body) in ["apple one", "apple two", "banana three"]
        .iter()
        .enumerate()
    {
        let id = format!("d{i}");
        append(
            &s,
            "alice",
            &Msg {
                id: &id,
                peer: "bob@example.org",
                sender: "bob@example.org/phone",
                direction: "in",
                body: Some(body),
                at: i as i64,
            },
        )
        .await;
    }
    append(
        &s,
        "bob",
        &Msg {
            id: "b0",
            peer: "alice@example.org",
            sender: "alice@example.org/x",
            direction: "out",
            body: Some("apple pie"),
            at: 1,
        },
    )
    .await;
    assert_eq!(search(&s, "alice", "apple").await, ["d0", "d1"]);

    // Removing delivered entries removes them from the index too.
    assert_eq!(s.inbox_remove_through("alice", 1).await.unwrap(), 1);
    assert_eq!(search(&s, "alice", "apple").await, ["d1"]);

    // A body replaced (e.g. by a retraction tombstone) is searched as it is now.
    let raw = db.raw().await;
    sqlx::query("UPDATE inbox SET body = $1 WHERE owner = $2 AND stanza_id = $3")
        .bind("cherry")
        .bind("alice")
        .bind("d1")
        .execute(&raw)
        .await
        .unwrap();
    assert!(search(&s, "alice", "apple").await.is_empty());
    assert_eq!(search(&s, "alice", "cherry").await, ["d1"]);
    sqlx::query("UPDATE inbox SET body = NULL WHERE owner = $1 AND stanza_id = $2")
        .bind("alice")
        .bind("d1")
        .execute(&raw)
        .await
        .unwrap();
    assert!(search(&s, "alice", "cherry").await.is_empty());
    sqlx::query("UPDATE inbox SET body = $1 WHERE owner = $2 AND stanza_id = $3")
        .bind("apple again")
        .bind("alice")
        .bind("d1")
        .execute(&raw)
        .await
        .unwrap();
    assert_eq!(search(&s, "alice", "apple").await, ["d1"]);
    raw.close().await;

    // Deleting a user removes its entries from the index; others keep theirs.
    assert!(s.delete_user("alice").await.unwrap());
    s.create_user("alice", &creds(1)).await.unwrap();
    assert!(search(&s, "alice", "apple").await.is_empty());
    assert!(search(&s, "alice", "banana").await.is_empty());
    assert_eq!(search(&s, "bob", "apple").await, ["b0"]);
    // New entries (seq numbers reused after re-creation) are indexed afresh.
    append(
        &s,
        "alice",
        &Msg {
            id: "n1",
            peer: "bob@example.org",
            sender: "bob@example.org/phone",
            direction: "in",
            body: Some("banana split"),
            at: 9,
        },
    )
    .await;
    assert_eq!(search(&s, "alice", "banana").await, ["n1"]);
}

/// A deterministic pseudo-random generator (xorshift64*), so the corpus is the
/// same on every run and both engines.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const VOCABULARY: &[&str] = &[
    "apple",
    "Banana",
    "cherry",
    "delta",
    "echo",
    "Foxtrot",
    "golf",
    "hotel",
    "india",
    "juliet",
    "kilo",
    "lima",
    "mike",
    "november",
    "oscar",
    "papa",
    "quebec",
    "romeo",
    "sierra",
    "tango",
    "привет",
    "МИР",
    "дом",
    "книга",
    "東京",
    "日本語",
    "αλφα",
    "ΒΗΤΑ",
    "ärger",
    "Öl",
    "café",
    "naïve",
    "2024",
    "42",
    "x1",
    "🎉",
];

async fn corpus_search_matches_the_oracle(db: TestDb) {
    const MESSAGES: usize = 20_000;
    let s = db.open().await;
    for user in ["alice", "bob"] {
        s.create_user(user, &creds(1)).await.unwrap();
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut corpus: Vec<(String, String, Option<String>)> = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        let words = 1 + rng.below(12);
        let body = (0..words)
            .map(|_| VOCABULARY[rng.below(VOCABULARY.len())])
            .collect::<Vec<_>>()
            .join(" ");
        let owner = if rng.below(4) == 0 { "bob" } else { "alice" };
        let body = (rng.below(50) != 0).then_some(body);
        corpus.push((format!("c{i}"), owner.to_owned(), body));
    }

    // Bulk insert (the store API commits one entry at a time; the index
    // triggers and expressions apply the same to any insert).
    let raw = db.raw().await;
    let mut tx = raw.begin().await.unwrap();
    for (chunk_index, chunk) in corpus.chunks(500).enumerate() {
        let mut sql = String::from(
            "INSERT INTO inbox (owner, seq, stanza_id, body, at_micros, sender, kind, xml, peer, direction) VALUES ",
        );
        for row in 0..chunk.len() {
            let b = row * 5;
            if row > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, 'bob@example.org/phone', 'chat', '<message/>', 'bob@example.org', 'in')",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5
            ));
        }
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (row, (id, owner, body)) in chunk.iter().enumerate() {
            let seq = (chunk_index * 500 + row + 1) as i64;
            q = q
                .bind(owner.clone())
                .bind(seq)
                .bind(id.clone())
                .bind(body.clone())
                .bind(seq);
        }
        q.execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    raw.close().await;

    // The oracle: every query word, lowercased, is a word of the lowercased
    // body; words without a letter or digit (the emoji) are not searchable.
    let oracle = |owner: &str, text: &str| -> Vec<String> {
        let terms: Vec<String> = text
            .split_whitespace()
            .filter(|t| t.chars().any(char::is_alphanumeric))
            .map(str::to_lowercase)
            .collect();
        corpus
            .iter()
            .filter(|(_, o, _)| o == owner)
            .filter(|(_, _, body)| {
                body.as_ref().is_some_and(|body| {
                    let words: Vec<String> =
                        body.split_whitespace().map(str::to_lowercase).collect();
                    terms.iter().all(|t| words.contains(t))
                })
            })
            .map(|(id, _, _)| id.clone())
            .collect()
    };

    let searches = [
        "apple",
        "APPLE banana",
        "привет мир",
        "книга",
        "東京",
        "日本語 2024",
        "αλφα βητα",
        "ÄRGER öl",
        "café naïve",
        "42",
        "x1 kilo lima",
        "🎉 apple",
        "zulu",
    ];
    let mut total_hits = 0;
    for text in searches {
        for owner in ["alice", "bob"] {
            let expected = oracle(owner, text);
            // Page through the hits 250 at a time, like a client would.
            let mut got = Vec::new();
            let mut after = None;
            loop {
                let page = s
                    .archive_query(
                        owner,
                        &ArchiveQuery {
                            fulltext: Some(text.to_owned()),
                            paging: Paging::After(after.clone()),
                            ..query(250)
                        },
                    )
                    .await
                    .unwrap();
                assert_eq!(page.count, Some(expected.len() as i64), "count of {text:?}");
                got.extend(page.items.iter().map(|e| e.stanza_id.clone()));
                if page.complete {
                    break;
                }
                after = page.last.clone();
            }
            assert_eq!(got.len(), expected.len(), "hits of {text:?} for {owner}");
            assert_eq!(got, expected, "hits of {text:?} for {owner}");
            total_hits += got.len();
        }
    }
    assert!(
        total_hits > 1000,
        "the corpus searches found too little: {total_hits}"
    );
}

async fn archive_bounds(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    assert_eq!(s.archive_bounds("alice").await.unwrap(), None);
    assert_eq!(s.archive_bounds("nobody").await.unwrap(), None);
    fill(&s, "alice", 3).await;
    let bounds = s.archive_bounds("alice").await.unwrap().expect("bounds");
    assert_eq!(bounds.first.id, "m01");
    assert_eq!(bounds.first.at_micros, 1000);
    assert_eq!(bounds.last.id, "m03");
    assert_eq!(bounds.last.at_micros, 3000);
}

async fn prefs_round_trip(db: TestDb) {
    let s = db.open().await;
    s.create_user("alice", &creds(1)).await.unwrap();
    assert_eq!(s.mam_prefs("alice").await.unwrap(), None);

    let prefs = MamPrefs {
        default: ArchiveDefault::Roster,
        always: vec![
            "romeo@montague.lit".into(),
            "nurse@capulet.lit/balcony with spaces".into(),
        ],
        never: vec!["montague@montague.lit".into()],
    };
    s.set_mam_prefs("alice", &prefs).await.unwrap();
    assert_eq!(s.mam_prefs("alice").await.unwrap(), Some(prefs));

    let replaced = MamPrefs {
        default: ArchiveDefault::Never,
        always: vec![],
        never: vec![],
    };
    s.set_mam_prefs("alice", &replaced).await.unwrap();
    assert_eq!(s.mam_prefs("alice").await.unwrap(), Some(replaced.clone()));

    assert!(matches!(
        s.set_mam_prefs("nobody", &replaced).await,
        Err(StoreError::NoSuchUser(_))
    ));
    assert_eq!(s.mam_prefs("nobody").await.unwrap(), None);

    assert!(s.delete_user("alice").await.unwrap());
    s.create_user("alice", &creds(1)).await.unwrap();
    assert_eq!(s.mam_prefs("alice").await.unwrap(), None);
}
