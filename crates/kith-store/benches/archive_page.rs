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
//! million entries, some seconds); set `KITH_BENCH_PG_URL` to a database URL
//! to measure PostgreSQL too (it makes accounts `user0` … `user199` and their
//! entries there).

use kith_store::bench::credentials;
use kith_store::{ArchiveQuery, Paging, Store};

fn main() {
    divan::main();
}

struct Archive {
    runtime: tokio::runtime::Runtime,
    store: Store,
    _dir: Option<tempfile::TempDir>,
}

/// The million entries, from the numbers `n` (a PostgreSQL database used
/// before keeps them: nothing is inserted twice).
const FILL: &str = "INSERT INTO inbox (owner, seq, stanza_id, sender, kind, xml, at_micros, peer,
        direction, body)
     SELECT 'user' || (i % 200), i, 'x' || i, 'x', 'chat', '<message/>',
        1796000000000000 + i,
        CASE WHEN i % 200 = 1 AND i % 100000 = 1 THEN 'rare@localhost'
             ELSE 'user' || ((i * 7) % 200) || '@localhost' END,
        'in', NULL
     FROM n WHERE true
     ON CONFLICT DO NOTHING";

/// SQLite in a temporary file, or PostgreSQL at `url` (accounts `user0` …
/// `user199` and their entries are made there, kept for the next run).
fn archive(url: Option<String>) -> Archive {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (url, dir) = match url {
        Some(url) => (url, None),
        None => {
            let dir = tempfile::tempdir().expect("tempdir");
            let url = format!("sqlite://{}", dir.path().join("kith.db").display());
            (url, Some(dir))
        }
    };
    let store = runtime.block_on(async {
        let store = Store::open(&url).await.expect("open");
        for i in 0..200 {
            store
                .create_user(&format!("user{i}"), &credentials())
                .await
                .expect("an account");
        }
        store.close().await;
        sqlx::any::install_default_drivers();
        let raw = sqlx::AnyPool::connect(&url).await.expect("a raw pool");
        let numbers = if dir.is_some() {
            "WITH RECURSIVE n (i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000)"
        } else {
            "WITH n (i) AS (SELECT generate_series(1, 1000000))"
        };
        sqlx::query(sqlx::AssertSqlSafe(format!("{numbers} {FILL}")))
            .execute(&raw)
            .await
            .expect("a million entries");
        if dir.is_some() {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&raw)
                .await
                .expect("a checkpoint");
        } else {
            sqlx::query("ANALYZE inbox")
                .execute(&raw)
                .await
                .expect("statistics");
        }
        raw.close().await;
        Store::open(&url).await.expect("open again")
    });
    Archive {
        runtime,
        store,
        _dir: dir,
    }
}

fn last_page(archive: &Archive, contact: &str) {
    let with = match contact {
        "rare" => "rare@localhost",
        _ => "user7@localhost",
    };
    let query = ArchiveQuery {
        with: Some(with.to_owned()),
        paging: Paging::Before(None),
        max: 10,
        ..ArchiveQuery::default()
    };
    let page = archive
        .runtime
        .block_on(archive.store.archive_query("user1", &query))
        .expect("a page");
    assert_eq!(page.items.len(), 10);
}

#[divan::bench(args = ["active", "rare"], sample_count = 50)]
fn last_page_with(bencher: divan::Bencher, contact: &str) {
    let archive = archive(None);
    bencher.bench_local(|| last_page(&archive, contact));
}

/// The same on PostgreSQL, when `KITH_BENCH_PG_URL` is set.
#[divan::bench(args = ["active", "rare"], sample_count = 50)]
fn postgres_last_page_with(bencher: divan::Bencher, contact: &str) {
    let Ok(url) = std::env::var("KITH_BENCH_PG_URL") else {
        bencher.bench_local(|| {});
        return;
    };
    let archive = archive(Some(url));
    bencher.bench_local(|| last_page(&archive, contact));
}
