//! A page of a conversation from a long archive: `Store::archive_query` with
//! a bare JID (MAM `with`), the last page of 10 (RSM `<before/>`, what a
//! client asks on opening a chat), on SQLite, from an owner's log of 5,000
//! of a million archived entries (200 owners) spanning 245 buckets of the
//! conversation index (`archive.rs`, `BUCKET`): with an `active` contact
//! (an entry of theirs in every bucket) and a `rare` one (10 entries, the
//! newest 100,000 numbers back). Includes the count, the settle and the
//! transaction: the whole query as the server runs it.
//!
//! `cargo bench -p kith-store --bench archive_page` (the set-up writes the
//! million entries once, some seconds).

use kith_store::bench::credentials;
use kith_store::{ArchiveQuery, Paging, Store};

fn main() {
    divan::main();
}

struct Archive {
    runtime: tokio::runtime::Runtime,
    store: Store,
    _dir: tempfile::TempDir,
}

fn archive() -> Archive {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("kith.db");
    let url = format!("sqlite://{}", db.display());
    let store = runtime.block_on(async {
        let store = Store::open(&url).await.expect("open");
        for i in 0..200 {
            store
                .create_user(&format!("user{i}"), &credentials())
                .await
                .expect("an account");
        }
        store.close().await;
        let conn = rusqlite::Connection::open(&db).expect("the database");
        conn.execute_batch(
            "WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000)
             INSERT INTO inbox (owner, seq, stanza_id, sender, kind, xml, at_micros, peer,
                direction, body)
             SELECT 'user' || (i % 200), i, printf('0A0b0C0d0%011d', i), 'x', 'chat',
                '<message/>', 1796000000000000 + i,
                CASE WHEN i % 200 = 1 AND i % 100000 = 1 THEN 'rare@localhost'
                     ELSE 'user' || ((i * 7) % 200) || '@localhost' END,
                'in', NULL
             FROM n;
             PRAGMA wal_checkpoint(TRUNCATE);",
        )
        .expect("a million entries");
        drop(conn);
        Store::open(&url).await.expect("open again")
    });
    Archive {
        runtime,
        store,
        _dir: dir,
    }
}

#[divan::bench(args = ["active", "rare"], sample_count = 50)]
fn last_page_with(bencher: divan::Bencher, contact: &str) {
    let archive = archive();
    let with = match contact {
        "rare" => "rare@localhost",
        _ => "user7@localhost",
    };
    let query = ArchiveQuery {
        with: Some(with.to_owned()),
        start_micros: None,
        end_micros: None,
        after_id: None,
        before_id: None,
        ids: Vec::new(),
        fulltext: None,
        paging: Paging::Before(None),
        max: 10,
    };
    bencher.bench_local(|| {
        let page = archive
            .runtime
            .block_on(archive.store.archive_query("user1", &query))
            .expect("a page");
        assert_eq!(page.items.len(), 10);
    });
}
