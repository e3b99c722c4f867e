//! The harness every store test file shares: each test body runs against SQLite
//! (a temporary file in a not-yet-existing directory) and, when
//! `KITH_TEST_PG_URL` names an admin URL, against PostgreSQL in a database of its
//! own that is dropped afterwards, even when the test fails.
#![allow(dead_code)]

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use kith_store::{Delivered, ScramSecret, Store, StoredCredentials};
use sqlx::Connection;

pub struct TestDb {
    pub url: String,
    /// Stores opened turn the log's tail on (`Store::set_tail`), with what
    /// its compaction does with delivered entries: on SQLite, 1:1 entries
    /// then wait in the tail first.
    pub tail: Option<Delivered>,
    /// Every store and raw pool opened, closed before the SQLite file is
    /// removed.
    opened: Arc<Mutex<Vec<Opened>>>,
}

enum Opened {
    Store(Store),
    Raw(sqlx::AnyPool),
}

impl TestDb {
    /// The SQLite database's file (a SQLite test's).
    pub fn sqlite_file(&self) -> std::path::PathBuf {
        let file = self.url.strip_prefix("sqlite://").expect("a SQLite test");
        std::path::PathBuf::from(file)
    }

    pub async fn open(&self) -> Store {
        self.track(Store::open(&self.url).await.expect("open store"))
            .await
    }

    /// A store with a pool of `max_connections`.
    pub async fn open_with(&self, max_connections: u32) -> Store {
        self.track(
            Store::open_with(&self.url, max_connections)
                .await
                .expect("open store"),
        )
        .await
    }

    async fn track(&self, store: Store) -> Store {
        if let Some(delivered) = self.tail {
            // Every owner counts as having a session.
            store
                .set_tail(Some(Arc::new(|_: &str| true)), delivered)
                .await
                .expect("the log's tail on");
        }
        self.opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Opened::Store(store.clone()));
        store
    }

    /// A raw pool on the same database, for what the store API cannot do.
    pub async fn raw(&self) -> sqlx::AnyPool {
        sqlx::any::install_default_drivers();
        let pool = sqlx::AnyPool::connect(&self.url).await.expect("raw pool");
        self.opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Opened::Raw(pool.clone()));
        pool
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub async fn run_sqlite<F, Fut>(body: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    sqlite_with(None, body).await;
}

/// As [`run_sqlite`], with retention "until delivered" (the log's tail on,
/// dropping delivered entries).
pub async fn run_sqlite_tail<F, Fut>(body: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    sqlite_with(Some(Delivered::Dropped), body).await;
}

/// As [`run_sqlite`], with an archive (the log's tail on, keeping delivered
/// entries: they move into the log).
pub async fn run_sqlite_archive<F, Fut>(body: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    sqlite_with(Some(Delivered::Kept), body).await;
}

async fn sqlite_with<F, Fut>(tail: Option<Delivered>, body: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().expect("tempdir");
    // A nested, not-yet-existing directory: open must create it.
    let path = dir.path().join("data").join("kith.db");
    let url = format!("sqlite://{}", path.display());
    let opened = Arc::new(Mutex::new(Vec::new()));
    body(TestDb {
        url,
        tail,
        opened: opened.clone(),
    })
    .await;
    // Close every connection (and the writer thread, with the last clone)
    // before the files go: SQLite keeps per-file state for the process, and a
    // new test's file on the reused inode of a still-open deleted one shares it.
    let stores = std::mem::take(&mut *opened.lock().unwrap_or_else(|e| e.into_inner()));
    for opened in &stores {
        match opened {
            Opened::Store(store) => store.close().await,
            Opened::Raw(pool) => pool.close().await,
        }
    }
    drop(stores);
    drop(dir);
}

/// Replaces the database name (the URL path) of `admin_url`.
pub fn with_database(admin_url: &str, db: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin_url, None),
    };
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let base = match base[after_scheme..].find('/') {
        Some(slash) => &base[..after_scheme + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

pub async fn run_postgres<F, Fut>(body: F)
where
    F: FnOnce(TestDb) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Ok(admin_url) = std::env::var("KITH_TEST_PG_URL") else {
        eprintln!("KITH_TEST_PG_URL not set: skipping the PostgreSQL variant of this test");
        return;
    };
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!(
        "kith_t_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    );
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("connect to KITH_TEST_PG_URL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .expect("drop stale test database");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create test database");

    let db = TestDb {
        url: with_database(&admin_url, &name),
        tail: None,
        opened: Arc::new(Mutex::new(Vec::new())),
    };
    let outcome = tokio::spawn(body(db)).await;

    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut admin)
    .await
    .expect("drop test database");
    let _ = admin.close().await;

    if let Err(e) = outcome {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
        panic!("test task failed: {e}");
    }
}

/// Declares `<name>::sqlite` and `<name>::postgres` tests running the async
/// fn `<name>(TestDb)`.
#[macro_export]
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::run_sqlite(super::$name).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::run_postgres(super::$name).await;
            }
        }
    )*};
}

/// Declares, besides `both!`'s two, `<name>::sqlite_tail` and
/// `<name>::sqlite_archive`: the test on SQLite with the log's tail on,
/// dropping delivered entries (retention "until delivered") or keeping them.
#[macro_export]
macro_rules! all_three {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::run_sqlite(super::$name).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite_tail() {
                super::run_sqlite_tail(super::$name).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite_archive() {
                super::run_sqlite_archive(super::$name).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::run_postgres(super::$name).await;
            }
        }
    )*};
}

/// A made-up SCRAM secret; different seeds give different secrets.
pub fn secret(seed: u8, iterations: u32) -> ScramSecret {
    ScramSecret {
        salt: vec![seed; 16],
        iterations,
        stored_key: (0..20).map(|i| seed.wrapping_add(i)).collect(),
        server_key: (0..32).map(|i| seed.wrapping_mul(i)).collect(),
    }
}

/// Credentials for a test account.
pub fn creds(seed: u8) -> StoredCredentials {
    StoredCredentials {
        sha1: secret(seed, 4096),
        sha256: secret(seed.wrapping_add(1), 5000),
    }
}

/// Rows in the log's tail: its generations' files (`<database>-tail/*.db`, in
/// WAL mode) counted on connections of their own.
pub async fn in_tail(db: &TestDb) -> i64 {
    let dir = std::path::PathBuf::from(format!("{}-tail", db.sqlite_file().display()));
    // `<g>.<n>.db`: per generation, the newest file (those it replaced are
    // deleted a moment later).
    let mut newest: std::collections::HashMap<String, (u64, std::path::PathBuf)> =
        std::collections::HashMap::new();
    for entry in std::fs::read_dir(&dir).expect("the tail's directory") {
        let file = entry.unwrap().path();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let parts: Vec<&str> = name.split('.').collect();
        if let [g, created, "db"] = parts[..] {
            let created: u64 = created.parse().expect("a file's number");
            let slot = newest
                .entry(g.to_owned())
                .or_insert((created, file.clone()));
            if created >= slot.0 {
                *slot = (created, file);
            }
        }
    }
    assert!(newest.len() <= 4, "one file per generation: {newest:?}");
    let mut n = 0;
    for (_, file) in newest.into_values() {
        let Ok(conn) = rusqlite::Connection::open_with_flags(
            &file,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE,
        ) else {
            continue;
        };
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        match conn.query_row("SELECT COUNT(*) FROM entries", [], |row| {
            row.get::<_, i64>(0)
        }) {
            Ok(rows) => n += rows,
            // Created, its table not yet.
            Err(error) if error.to_string().contains("no such table") => {}
            Err(error) => panic!("counting {}: {error}", file.display()),
        }
    }
    n
}

/// Waits (up to 15 s) until the writer has compacted the whole tail.
pub async fn tail_compacted(db: &TestDb) {
    for _ in 0..150 {
        if in_tail(db).await == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the log's tail was not compacted within 15 s");
}

/// The `(owner, seq)` pairs in `inbox` proper, in order.
pub async fn in_log(raw: &sqlx::AnyPool) -> Vec<(String, i64)> {
    use sqlx::Row;
    sqlx::query("SELECT owner, seq FROM inbox ORDER BY owner, seq")
        .fetch_all(raw)
        .await
        .unwrap()
        .iter()
        .map(|row| (row.try_get("owner").unwrap(), row.try_get("seq").unwrap()))
        .collect()
}
