//! The archive's write path apart from the server around it: a closed
//! generation of the log's tail (200 accounts, 50 chat messages each,
//! interleaved as they arrive) moved into `inbox` as the writer moves it with
//! an archive (`batch/tail.rs`, `Tail::drain`: a chunk of owners per
//! transaction), and then indexed for full-text search as the writer's passes
//! index it (`batch/sqlite.rs`, `full_text_pass`). Divan prints entries per
//! second (per entry is the reciprocal; a 1:1 message is two entries, the
//! recipient's and the sender's). Steadier than the `chat` scenario, where CPU
//! per message moves ±10 % from run to run on this machine.
//!
//! `move_generation` into a `new_archive` (the schema as migrated, nothing
//! archived yet), a `large_archive` (a million entries archived already: the
//! server's case after a while), and the large one
//! `_without_its_indexes` (the time, archive-id and conversation indexes
//! dropped first: what they cost); `move_server_generation`, the same with a
//! generation shaped as the server's under load (500 entries per owner, not
//! 50); and `segment_generation`, what building the archive's keys and full
//! text over the generation's own file, in bulk, would cost instead (the
//! append-laid-out archive's segments, ARCHITECTURE.md); `merge_generation`,
//! an estimate of what merging segments costs per entry (the generation's
//! rows written again in key order to a new file, built as a segment). A
//! large archive's set-up takes seconds per sample. `cargo bench -p
//! kith-store --bench tail_move`

use divan::counter::ItemsCount;
use kith_store::bench::TailMove;

fn main() {
    divan::main();
}

const OWNERS: usize = 200;
const PER_OWNER: usize = 50;
const ENTRIES: usize = OWNERS * PER_OWNER;
/// The indexes only an archive needs (by time, by conversation, and the one
/// by archive id, which holds ids of earlier forms only; `migrate.rs`).
const WITHOUT_ARCHIVE_INDEXES: &str = "DROP INDEX inbox_owner_time; \
    DROP INDEX inbox_owner_stanza_id; DROP INDEX inbox_conversation;";
/// A million chat entries already archived (5,000 per owner, their
/// full-text index's mark past them; ids of today's 21 characters, so outside
/// the index by id as a database written by this build has them — their
/// prefix is not their time, which a move never reads), checkpointed as the server's
/// checkpointer keeps its WAL: how the move slows as the archive grows.
const LARGE: &str = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000) \
             INSERT INTO inbox (owner, seq, stanza_id, sender, kind, xml, at_micros, peer, direction, body) \
             SELECT 'user' || (i % 200), 1000000 + i, printf('0A0b0C0d0%012d', i), 'user1@localhost/bench', 'chat', \
             printf('<message xmlns=''jabber:client'' to=''user%d@localhost'' type=''chat'' id=''m1'' from=''user1@localhost/bench''><body>kb 1045834044 0 %d xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx</body><stanza-id xmlns=''urn:xmpp:sid:0'' id=''8E0QodURFLNgNEyWq8hs'' by=''user1@localhost''/></message>', i % 200, i), \
             1796000000000000 + i, 'user' || ((i * 7) % 200) || '@localhost', 'in', \
             printf('kb 1045834044 0 %d xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx', i) FROM n; \
             UPDATE fts_state SET next_rowid = (SELECT MAX(id) + 1 FROM inbox); \
             PRAGMA wal_checkpoint(TRUNCATE);";

/// SQL run on the new database before the generation is appended.
fn prepare(variant: &str) -> String {
    match variant {
        "large_archive" => LARGE.to_owned(),
        "large_archive_without_its_indexes" => format!("{LARGE} {WITHOUT_ARCHIVE_INDEXES}"),
        _ => String::new(),
    }
}

/// A runtime for the fixtures' set-up (the store's migrations are async), and
/// their directories, kept until the benchmark ends.
struct SetUp {
    runtime: tokio::runtime::Runtime,
    dirs: std::cell::RefCell<Vec<tempfile::TempDir>>,
}

impl SetUp {
    fn new() -> SetUp {
        SetUp {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime"),
            dirs: Default::default(),
        }
    }

    fn fixture(&self, prepare: &str) -> TailMove {
        self.fixture_of(prepare, PER_OWNER)
    }

    /// A generation of `per_owner` entries of each owner.
    fn fixture_of(&self, prepare: &str, per_owner: usize) -> TailMove {
        let dir = tempfile::tempdir().expect("tempdir");
        let fixture = self
            .runtime
            .block_on(TailMove::new(dir.path(), OWNERS, per_owner, prepare))
            .expect("a generation to move");
        self.dirs.borrow_mut().push(dir);
        fixture
    }
}

#[divan::bench(
    args = ["new_archive", "large_archive", "large_archive_without_its_indexes"],
    sample_count = 10,
    sample_size = 1
)]
fn move_generation(bencher: divan::Bencher, variant: &str) {
    every_entry(bencher, &prepare(variant), PER_OWNER, TailMove::run);
}

/// Times `step` on a new generation per sample (`per_owner` entries of each
/// owner, the database changed by `prepare` first), which must handle every
/// entry.
fn every_entry(
    bencher: divan::Bencher,
    prepare: &str,
    per_owner: usize,
    step: fn(&mut TailMove) -> kith_store::Result<usize>,
) {
    let set_up = SetUp::new();
    bencher
        .counter(ItemsCount::new(OWNERS * per_owner))
        .with_inputs(|| set_up.fixture_of(prepare, per_owner))
        .bench_local_values(|mut fixture| {
            assert_eq!(step(&mut fixture).expect("done"), OWNERS * per_owner);
            fixture
        });
}

/// Entries per owner in a generation as the server's are under load (a
/// generation closes at 100,000 entries; 200 owners at 28,000 msg/s fill it in
/// under 2 s).
const SERVER_PER_OWNER: usize = 500;

/// The same move, a generation shaped as the server's under load (500 entries
/// per owner rather than 50): a chunk then holds one owner.
#[divan::bench(args = ["new_archive", "large_archive"], sample_count = 5, sample_size = 1)]
fn move_server_generation(bencher: divan::Bencher, variant: &str) {
    every_entry(bencher, &prepare(variant), SERVER_PER_OWNER, TailMove::run);
}

/// What a generation would cost as an archive segment built in place (its
/// four keys and its full text, sorted in bulk: ARCHITECTURE.md's plan),
/// against moving it (`move_generation`, `move_server_generation`) and then
/// indexing its full text (`index_generation`).
#[divan::bench(args = [50, 500], sample_count = 10, sample_size = 1)]
fn segment_generation(bencher: divan::Bencher, per_owner: usize) {
    every_entry(bencher, "", per_owner, TailMove::build_segment);
}

/// What merging segments would cost per entry, estimated on one
/// generation: its rows written again in key order to a new file and that
/// file built as a segment (`TailMove::merge_segment`).
#[divan::bench(args = [50, 500], sample_count = 10, sample_size = 1)]
fn merge_generation(bencher: divan::Bencher, per_owner: usize) {
    every_entry(bencher, "", per_owner, TailMove::merge_segment);
}

#[divan::bench(sample_count = 20, sample_size = 1)]
fn index_generation(bencher: divan::Bencher) {
    let set_up = SetUp::new();
    bencher
        .counter(ItemsCount::new(ENTRIES))
        .with_inputs(|| {
            let mut fixture = set_up.fixture("");
            fixture.run().expect("moved");
            fixture
        })
        .bench_local_values(|mut fixture| {
            assert_eq!(fixture.index().expect("indexed"), ENTRIES);
            fixture
        });
}
