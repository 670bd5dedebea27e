"""The client CLI and watch against real node processes (a 2-node cluster, scripts/cluster.py):
every key command with its exit statuses, a watcher on node 2 that receives writes made on
node 1, and /metrics on both nodes moving with that traffic."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cli import in_process_cli
from tests.support.cluster import LiveCluster, wait_for
from tests.support.procs import run_kvs

LINE_TIMEOUT = 30.0  # generous: a loaded 2-core machine


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    live = LiveCluster(tmp_path_factory.mktemp("client"), names=("node1", "node2"))
    try:
        live.start()
        yield live
    finally:
        live.cluster.stop()
    live.assert_clean_logs()


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """The `kvs` command run in this process (a process per call took a second each on a
    loaded machine); `kvs()` below runs the real process where that is the point."""
    return in_process_cli(capsys, monkeypatch)


def kvs(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return run_kvs(*args, timeout=60, stdin=stdin, env={"KVS_URL": "", "KVS_TOKEN": "", **env})


def test_key_commands_and_exit_statuses(pair: LiveCluster, cli: Any) -> None:
    url = pair.url("node1")
    # The real process once: a write, and an error answer's exit status and message.
    done = kvs("put", "proc/a", "1", "--url", url)
    assert done.returncode == 0 and done.stdout.startswith("wrote proc/a"), done.stderr
    refused = kvs("get", "proc/none", "--url", url)
    assert refused.returncode == 1 and refused.stderr.strip() == "kvs: 404 key not found"
    assert kvs("put", "proc/x", "{nope", "--url", url).returncode == 2
    put = cli("put", "cli/socks", '{"colour": "red"}', "--url", url)
    assert put.returncode == 0, put.stderr
    assert put.stdout.startswith("wrote cli/socks (version ")
    put_json = cli("put", "cli/socks", "-", "--json", "--ttl", "1h", stdin='{"colour": "blue"}',
                   KVS_URL=url)  # fmt: skip
    assert put_json.returncode == 0, put_json.stderr
    written = json.loads(put_json.stdout)
    assert written["key"] == "cli/socks" and len(written["uuid"]) == 36

    got = cli("get", "cli/socks", "--url", url)
    assert got.returncode == 0 and json.loads(got.stdout) == {"colour": "blue"}
    got_json = json.loads(cli("get", "cli/socks", "--json", KVS_URL=url).stdout)
    assert got_json["uuid"] == written["uuid"] and got_json["data"] == {"colour": "blue"}

    conflict = cli("put", "cli/socks", "1", "--if-match", "0" * 36, "--url", url)
    assert conflict.returncode == 1 and "409 version conflict" in conflict.stderr
    assert conflict.stdout == ""

    cli("put", "cli/drawer/pants", "[1, 2]", "--url", url)
    listing = cli("ls", "cli", "--url", url)
    assert listing.returncode == 0, listing.stderr
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["NAME", "TYPE", "SIZE", "UPDATED"]
    assert lines[1].split()[:2] == ["drawer/", "prefix"]
    assert lines[2].split()[:2] == ["socks", "key"]
    assert lines[-1] == "2 children"
    assert json.loads(cli("ls", "cli", "--json", "--url", url).stdout)["total"] == 2

    tree = cli("tree", "cli", "--url", url)
    assert [line.split()[0] for line in tree.stdout.splitlines()[1:3]] == [
        "cli/drawer/pants",
        "cli/socks",
    ]
    assert tree.stdout.splitlines()[-1] == "2 keys"

    history = cli("history", "cli/socks", "--url", url)
    assert history.returncode == 0
    assert '{"colour": "red"}' in history.stdout and "1 previous version" in history.stdout
    assert json.loads(cli("history", "cli/socks", "--json", "--url", url).stdout)[0]["data"] == {
        "colour": "red"
    }

    removed = cli("rm", "cli/socks", "--url", url)
    assert removed.returncode == 0 and removed.stdout.strip() == "deleted cli/socks"
    missing = cli("get", "cli/socks", "--url", url)
    assert missing.returncode == 1 and missing.stderr.strip() == "kvs: 404 key not found"
    assert cli("rm", "cli/socks", "--url", url).returncode == 1

    # Bad usage: exit status 2, nothing sent.
    not_json = cli("put", "cli/x", "{nope", "--url", url)
    assert not_json.returncode == 2 and "not valid JSON" in not_json.stderr
    assert cli("get", "--url", url).returncode == 2  # no key
    assert cli("get", "k", "--url", "ftp://example").returncode == 2
    assert cli("user").returncode == 2  # no action
    bad_key = cli("get", "a//b", "--url", url)
    assert bad_key.returncode == 1 and "invalid key" in bad_key.stderr  # the node's 400


class LineReader:
    """Lines of a process's stdout, read by a thread so each wait can be bounded."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str | None] = queue.Queue()
        assert proc.stdout is not None
        stdout = proc.stdout

        def pump() -> None:
            for line in stdout:
                self.lines.put(line)
            self.lines.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def next_json(self) -> dict[str, Any]:
        line = self.lines.get(timeout=LINE_TIMEOUT)
        assert line is not None, "the watch ended early"
        return dict(json.loads(line))


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with httpx.Client(timeout=5, trust_env=False) as http:
        text = http.get(f"{url}/metrics").text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def moved(after: Samples, before: Samples, name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_watch_on_node2_receives_writes_made_on_node1(pair: LiveCluster) -> None:
    url1, url2 = pair.url("node1"), pair.url("node2")
    before1, before2 = scrape(url1), scrape(url2)
    with httpx.Client(timeout=5, trust_env=False) as http:
        first = http.put(f"{url1}/kv/watched/first", content=b"1").json()
        wait_for(
            "the first write reaches node 2",
            lambda: http.get(f"{url2}/kv/watched/first").status_code == 200,
        )
        # Resuming from just before it, the watcher replays it first: proof it is subscribed.
        proc = subprocess.Popen(
            [sys.executable, "-m", "kvs", "watch", "watched", "--json", "--url", url2,
             "--since", str(first["timestamp"] - 1)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            reader = LineReader(proc)
            replayed = reader.next_json()
            assert (replayed["key"], replayed["uuid"]) == ("watched/first", first["uuid"])
            second = http.put(f"{url1}/kv/watched/second", content=b'{"n": 2}').json()
            http.put(f"{url1}/kv/elsewhere", content=b"0")  # not under the prefix
            assert http.delete(f"{url1}/kv/watched/first").status_code == 204
            live = reader.next_json()
            assert live == {
                "key": "watched/second",
                "uuid": second["uuid"],
                "timestamp": second["timestamp"],
                "deleted": False,
                "id": live["id"],
            }
            deleted = reader.next_json()
            assert (deleted["key"], deleted["deleted"]) == ("watched/first", True)
        finally:
            proc.send_signal(signal.SIGINT)  # Ctrl-C ends a watch with status 0
            code = proc.wait(timeout=LINE_TIMEOUT)
            stderr = proc.stderr.read() if proc.stderr else ""
        assert code == 0, stderr

    deadline = time.monotonic() + LINE_TIMEOUT
    while True:  # counters are read at scrape time: poll until the push has been counted
        after1, after2 = scrape(url1), scrape(url2)
        pushed = moved(after1, before1, "kvs_sync_records_pushed_total", path="on_write")
        merged = moved(after2, before2, "kvs_sync_records_merged_total")
        if (pushed >= 4 and merged >= 4) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert pushed >= 4 and merged >= 4  # first, second, elsewhere, the delete
    for after in (after1, after2):
        assert after[("kvs_members", frozenset({("state", "alive")}))] == 2
        assert after[("kvs_gossip_messages_total", frozenset({("direction", "in")}))] > 0
        assert after[("kvs_gossip_bytes_total", frozenset({("direction", "out")}))] > 0
    assert moved(after2, before2, "kvs_watch_events_sent_total") == 3
    wait_for("node 2 lets the watcher go", lambda: scrape(url2)[("kvs_watchers", frozenset())] == 0)


def test_members_uses_the_client(pair: LiveCluster) -> None:
    table = kvs("members", "--url", pair.url("node1"), "--token", "ignored-without-auth")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[-1] == "2 members: 2 alive"
