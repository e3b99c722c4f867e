//! Routing a message between two local sessions: `deliver::route` from a
//! bound, available sender to an available recipient's bare JID, through the
//! inbox log (appended and committed on SQLite, the embedded default) to the
//! recipient's session queue. No sockets: what a connection costs on top is
//! the `chat` scenario's (`kith-bench`).
//!
//! `cargo bench -p kith-server --bench route`. `quiet`: one message on an
//! otherwise idle server (the previous commit is 6 ms old, so the writer
//! commits at once rather than letting more gather): the latency of a message
//! that is a commit of its own. `busy_100`: 100 messages routed before the
//! first commit is awaited, as a busy server's sessions do (they share
//! commits): time per message is the call's time / 100 (divan prints
//! messages/s). Each with archiving off and on (`args`).

use divan::counter::ItemsCount;
use kith_server::bench::RoutePair;

fn main() {
    divan::main();
}

/// A server and a runtime for one benchmark.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    pair: Option<RoutePair>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new(archive: bool) -> Fixture {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let dir = tempfile::tempdir().expect("a temporary directory");
        let pair = runtime
            .block_on(RoutePair::start(dir.path(), archive))
            .expect("the server starts");
        Fixture {
            runtime,
            pair: Some(pair),
            _dir: dir,
        }
    }

    fn route(&mut self, count: usize) -> usize {
        let pair = self.pair.as_mut().expect("running");
        self.runtime
            .block_on(pair.route(count))
            .expect("the messages arrive")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(pair) = self.pair.take() {
            self.runtime.block_on(pair.stop());
        }
    }
}

#[divan::bench(args = [false, true], sample_count = 100, sample_size = 1)]
fn quiet(bencher: divan::Bencher, archive: bool) {
    let mut fixture = Fixture::new(archive);
    bencher
        .counter(ItemsCount::new(1usize))
        // Not timed: the writer's last commit is then older than what it
        // counts as busy (5 ms).
        .with_inputs(|| std::thread::sleep(std::time::Duration::from_millis(6)))
        .bench_local_values(|()| fixture.route(1));
}

#[divan::bench(args = [false, true], sample_count = 50)]
fn busy_100(bencher: divan::Bencher, archive: bool) {
    let mut fixture = Fixture::new(archive);
    bencher
        .counter(ItemsCount::new(100usize))
        .bench_local(|| fixture.route(100));
}
