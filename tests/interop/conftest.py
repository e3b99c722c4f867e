"""Fixtures of the kith interop suite.

- `backend`: every test runs on SQLite, and also on PostgreSQL when
  KITH_TEST_PG_URL is set (a fresh database per server start).
- `server`: one `kith serve` per backend for the session (default config).
- `server_factory`: start an extra server with config overrides (for limits).
- `xmpp`: a per-test ClientPool (accounts + connected slixmpp clients), all
  closed at teardown.
A failing test gets the tail of each running server's log in its report.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import pytest_asyncio

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from kithtest.server import KithServer, kith_bin  # noqa: E402
from kithtest.xmpp import ClientPool  # noqa: E402

BACKENDS = ["sqlite"] + (["postgres"] if os.environ.get("KITH_TEST_PG_URL") else [])

# servers currently running, for log tails and liveness checks
LIVE: list[KithServer] = []


def pytest_report_header(config):
    return [
        f"kith binary: {kith_bin()}",
        f"storage backends: {', '.join(BACKENDS)}"
        + ("" if "postgres" in BACKENDS else " (set KITH_TEST_PG_URL to add postgres)"),
    ]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for srv in list(LIVE):
            report.sections.append(
                (f"kith server log tail ({srv.name}, {srv.backend}, {srv.workdir})", srv.log_tail(80))
            )


def _terminal(config):
    return config.pluginmanager.getplugin("terminalreporter")


class ServerFactory:
    def __init__(self, tmp_path_factory, request):
        self.tmp_path_factory = tmp_path_factory
        self.request = request

    def start(self, name: str, backend: str, overrides: dict | None = None) -> KithServer:
        workdir = self.tmp_path_factory.mktemp(f"{name}-{backend}")
        srv = KithServer(workdir, backend, overrides, name=name)
        try:
            srv.start()
        except Exception:
            srv.cleanup()
            raise
        LIVE.append(srv)
        srv._failed_before = self.request.session.testsfailed
        return srv

    def stop(self, srv: KithServer) -> None:
        if srv in LIVE:
            LIVE.remove(srv)
        code = srv.stop()
        session = self.request.session
        if session.testsfailed > getattr(srv, "_failed_before", 0):
            tr = _terminal(self.request.config)
            if tr is not None:
                tr.write_line("")
                tr.write_sep("-", f"kith server {srv.name} ({srv.backend}) log tail, exit code {code}")
                tr.write_line(srv.log_tail(60))
        srv.cleanup()


@pytest.fixture(scope="session")
def server_factory(tmp_path_factory, request):
    factory = ServerFactory(tmp_path_factory, request)
    yield factory
    # A server a test left running is stopped with the session, not left behind.
    for srv in list(LIVE):
        factory.stop(srv)


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(scope="session")
def server(backend, server_factory):
    srv = server_factory.start("main", backend)
    yield srv
    server_factory.stop(srv)


@pytest.fixture(autouse=True)
def _servers_stay_alive():
    """Every test also checks that no kith server process died while it ran."""
    yield
    dead = [s for s in LIVE if not s.alive()]
    if dead:
        details = "; ".join(
            f"{s.name}/{s.backend} exit code {s.proc.returncode if s.proc else '?'}" for s in dead
        )
        for s in dead:
            LIVE.remove(s)
        pytest.fail(f"kith server process died during this test: {details}\n"
                    + "\n".join(s.log_tail(40) for s in dead))


@pytest_asyncio.fixture
async def xmpp(server):
    pool = ClientPool(server)
    yield pool
    await pool.close_all()
