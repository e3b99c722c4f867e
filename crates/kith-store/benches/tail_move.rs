//! Moving a closed generation of the log's tail into `inbox`, as the writer
//! does with an archive (`batch/tail.rs`, `Tail::drain`): 200 accounts, 50
//! chat messages each in the generation, interleaved as they arrive, moved a
//! chunk of owners per transaction into `inbox` with its indexes (the
//! full-text pass is the writer's next step, not this). Divan prints entries
//! per second; per entry is the reciprocal. What the archive's write path
//! costs apart from the server around it — steadier than the `chat` scenario,
//! where CPU per message moves ±10 % from run to run on this machine.
//!
//! `cargo bench -p kith-store --bench tail_move`

use divan::counter::ItemsCount;
use kith_store::bench::TailMove;

fn main() {
    divan::main();
}

const OWNERS: usize = 200;
const PER_OWNER: usize = 50;

#[divan::bench(sample_count = 20, sample_size = 1)]
fn generation_into_inbox(bencher: divan::Bencher) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dirs: std::cell::RefCell<Vec<tempfile::TempDir>> = Default::default();
    bencher
        .counter(ItemsCount::new(OWNERS * PER_OWNER))
        .with_inputs(|| {
            let dir = tempfile::tempdir().expect("tempdir");
            let fixture = runtime
                .block_on(TailMove::new(dir.path(), OWNERS, PER_OWNER))
                .expect("a generation to move");
            dirs.borrow_mut().push(dir);
            fixture
        })
        .bench_local_values(|mut fixture| {
            let moved = fixture.run().expect("moved");
            assert_eq!(moved, OWNERS * PER_OWNER);
            fixture
        });
}
