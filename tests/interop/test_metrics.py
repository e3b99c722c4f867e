"""Prometheus metrics at /metrics, read with the Prometheus project's own
Python client's parser of the text format (prometheus-client, PyPI).

What an operator checks: the page parses as Prometheus's format, the session
and connection gauges follow clients signing in and out, the inbox-log
writer's counters move as messages are stored, the process figures are there,
and the page is not open to everyone: loopback only by default, a bearer token
once one is set, nothing when turned off.
"""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kithtest.xmpp import ClientPool, body_of

TOKEN = "metrics-token-for-the-test-0123"


def fetch(srv, headers: dict | None = None):
    """Status, headers (case-insensitive) and body."""
    request = urllib.request.Request(f"http://127.0.0.1:{srv.http_port}/metrics", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as res:
            return res.status, res.headers, res.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()


def scrape(srv, headers: dict | None = None) -> dict[str, float]:
    """Every sample by name (labels left out: each name here has one sample)."""
    status, response_headers, text = fetch(srv, headers)
    assert status == 200, text
    assert response_headers.get("Content-Type", "").startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name] = sample.value
    return samples


async def until(srv, name: str, want: float, timeout: float = 10.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(srv)
        if samples.get(name) == want:
            return samples
        assert time.monotonic() < deadline, f"{name} stayed {samples.get(name)}, expected {want}"
        await asyncio.sleep(0.1)


@pytest.fixture
def metrics_server(backend, server_factory):
    srv = server_factory.start("metrics", backend)
    yield srv
    server_factory.stop(srv)


async def test_sessions_and_stored_messages_show_in_the_metrics(metrics_server):
    srv = metrics_server
    samples = scrape(srv)
    assert samples["kith_build_info"] == 1
    assert samples["kith_sessions"] == 0
    assert samples["kith_connections"] == 0
    assert samples["process_resident_memory_bytes"] > 1_000_000
    assert samples["process_open_fds"] > 0
    assert samples["process_max_fds"] >= samples["process_open_fds"]
    assert samples["process_cpu_seconds_total"] > 0
    assert abs(samples["process_start_time_seconds"] - time.time()) < 600
    # A node alone has no cluster figures.
    assert "kith_cluster_connected" not in samples

    pool = ClientPool(srv)
    try:
        alice, bob = await pool.account("ma"), await pool.account("mb")
        a = await pool.connect(alice)
        b = await pool.connect(bob)
        samples = await until(srv, "kith_sessions", 2)
        assert samples["kith_users_online"] == 2
        assert samples["kith_connections"] == 2
        assert samples["kith_sessions_detached"] == 0

        before = scrape(srv)
        for n in range(3):
            a.send_message(mto=bob.jid, mbody=f"counted {n}", mtype="chat")
        for n in range(3):
            await b.wait_message(lambda m, n=n: body_of(m) == f"counted {n}")
        after = scrape(srv)
        # Each message is a job of the writer's (acknowledgements may add more).
        assert after["kith_inbox_writer_jobs_total"] >= before["kith_inbox_writer_jobs_total"] + 3
        assert after["kith_inbox_writer_batches_total"] > before["kith_inbox_writer_batches_total"]
        assert after["kith_inbox_writer_queue"] >= 0

        await b.close()
        samples = await until(srv, "kith_sessions", 1)
        assert samples["kith_users_online"] == 1
    finally:
        await pool.close_all()
    await until(srv, "kith_connections", 0)


async def test_a_token_guards_the_metrics_once_set(server_factory):
    srv = server_factory.start("metrics-token", "sqlite", {"metrics": {"token": TOKEN}})
    try:
        # Loopback alone no longer opens them.
        status, headers, _ = fetch(srv)
        assert status == 401
        assert headers.get("WWW-Authenticate") == "Bearer"
        status, _, _ = fetch(srv, {"Authorization": "Bearer not-the-token-at-all"})
        assert status == 401
        assert scrape(srv, {"Authorization": f"Bearer {TOKEN}"})["kith_sessions"] == 0
    finally:
        server_factory.stop(srv)


async def test_metrics_turned_off_are_not_found(server_factory):
    srv = server_factory.start("metrics-off", "sqlite", {"metrics": {"enabled": False}})
    try:
        status, _, _ = fetch(srv)
        assert status == 404
    finally:
        server_factory.stop(srv)
