"""Daily life for etcd and Consul users (issue 17), against a real 3-node cluster with auth:
the forgiving command line, prefix operations, dump and load (the 10,000-key round trip into
an empty cluster), names instead of UUIDs and scope presets, and the small server-side
items (`_list`, the JSON 404, the reason phrase, `/kv_changes` pages)."""

from __future__ import annotations

import argparse
import base64
import json
import os
import pty
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

import kvs
from kvs.auth.permissions import ALL_SCOPES
from kvs.cli import main
from tests.support.cli import in_process_cli
from tests.support.cluster import LiveCluster, client, wait_for
from tests.support.procs import config_value, init_config, run_kvs


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    cluster = LiveCluster(tmp_path_factory.mktemp("daily"), auth=True)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cluster.stop()
    cluster.assert_clean_logs()


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """`kvs ...` in this process (stdin is not a terminal, nor are stdout and stderr)."""
    return in_process_cli(capsys, monkeypatch)


def kvs_process(
    *args: str, stdin: str | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    return run_kvs(*args, timeout=120, stdin=stdin, env={"KVS_URL": "", "KVS_TOKEN": "", **env})


def batch_put(url: str, token: str, items: list[tuple[str, Any]]) -> None:
    with client() as c:
        for start in range(0, len(items), 1000):
            ops = [{"op": "put", "key": k, "data": v} for k, v in items[start : start + 1000]]
            answer = c.post(
                f"{url}/kv/_batch", json={"ops": ops}, headers={"Authorization": f"Bearer {token}"}
            )
            assert answer.status_code == 200, answer.text


# --- the forgiving command line -------------------------------------------------------------


def test_global_options_anywhere_help_version_and_suggestions(live: LiveCluster, cli: Any) -> None:
    url, token = live.url("node1"), live.root_token()
    assert cli("put", "forgive/a", "1", "--url", url, "--token", token).returncode == 0
    before = cli("--url", url, "--token", token, "get", "forgive/a")
    assert before.returncode == 0 and json.loads(before.stdout) == 1, before.stderr
    mixed = cli("--json", "--url", url, "get", "forgive/a", "--token", token)
    assert mixed.returncode == 0 and json.loads(mixed.stdout)["data"] == 1
    assert cli(f"--url={url}", "--token", token, "count", "forgive").stdout.strip() == "1"

    version = cli("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"kvs {kvs.__version__}"
    top = cli("help")
    assert top.returncode == 0 and "get" in top.stdout and "dump" in top.stdout
    one = cli("help", "token", "create")
    assert one.returncode == 0 and "read-write" in one.stdout and "--scope" in one.stdout
    assert cli("help", "gte").returncode == 2

    typo = cli("gte", "forgive/a")
    assert typo.returncode == 2 and "did you mean 'get'?" in typo.stderr
    option = cli("get", "forgive/a", "--urll", url)
    assert option.returncode == 2 and "did you mean '--url'?" in option.stderr
    action = cli("user", "shwo", "alice")
    assert action.returncode == 2 and "did you mean 'show'?" in action.stderr

    # Exit 1 for not found or refused; every 401 says how to pass a token.
    missing = cli("get", "forgive/none", "--url", url, "--token", token)
    assert missing.returncode == 1 and missing.stderr.strip() == "kvs: 404 key not found"
    anonymous = cli("get", "forgive/a", "--url", url)
    assert anonymous.returncode == 1 and anonymous.stderr.startswith("kvs: 401 ")
    assert "--token TOKEN or $KVS_TOKEN" in anonymous.stderr
    backup = cli("backup", "status", "--url", url)
    assert backup.returncode == 1 and "--token TOKEN or $KVS_TOKEN" in backup.stderr
    bad_token = cli("count", "--url", url, "--token", "not-a-token")
    assert bad_token.returncode == 1 and "--token TOKEN or $KVS_TOKEN" in bad_token.stderr
    assert "not-a-token" not in bad_token.stderr


def test_backup_status_and_token_list_output(live: LiveCluster, cli: Any) -> None:
    url, token = live.url("node2"), live.root_token()
    human = cli("backup", "status", "--url", url, "--token", token)
    assert human.returncode == 0, human.stderr
    assert not human.stdout.lstrip().startswith("{")
    assert any(line.split()[:2] == ["node_id", "node2"] for line in human.stdout.splitlines())
    machine = cli("backup", "status", "--url", url, "--token", token, "--json")
    assert json.loads(machine.stdout)["node_id"] == "node2"
    tokens = json.loads(cli("token", "list", "--json", "--url", url, "--token", token).stdout)
    assert set(tokens) == {"tokens"} and tokens["tokens"][0]["scopes"]
    users = json.loads(cli("user", "list", "--json", "--url", url, "--token", token).stdout)
    assert [u["nickname"] for u in users["users"]] == ["root"]


def test_server_answers_list_alias_json_404_reason_phrase_and_full_pages(live: LiveCluster) -> None:
    url, token = live.url("node3"), live.root_token()
    auth = {"Authorization": f"Bearer {token}"}
    batch_put(url, token, [("alias/x", 1), ("alias/y/z", 2)])
    with client() as c:
        nope = c.get(f"{url}/no/such/thing")
        assert nope.status_code == 404 and nope.reason_phrase == "Not Found"
        assert nope.json() == {"error": "no such endpoint: /no/such/thing (see docs/reference.md)"}
        assert c.get(f"{url}/health").reason_phrase == "OK"
        listed = c.get(f"{url}/kv/alias/_list", headers=auth)
        assert listed.status_code == 200
        assert listed.json() == c.get(f"{url}/kv/alias/_ls", headers=auth).json()
        assert [ch["subkey"] for ch in listed.json()["children"]] == ["x", "y"]
        # The root token's own records (users, groups, tokens) come first in the time index
        # and are hidden: a page is never empty while more follow.
        since, seen = 0, []
        for _ in range(200):
            page = c.get(f"{url}/kv_changes", params={"since": since, "limit": 1}, headers=auth)
            body = page.json()
            assert body["changes"] or not body["more"], body
            seen += [ch["key"] for ch in body["changes"]]
            since = body["next"]
            if not body["more"]:
                break
        assert {"alias/x", "alias/y/z"} <= set(seen)


# --- prefix operations --------------------------------------------------------------------


def test_get_count_and_rm_by_prefix(live: LiveCluster, cli: Any) -> None:
    url, token = live.url("node1"), live.root_token()
    items = [(f"pre/{i:05d}", {"n": i}) for i in range(1500)]  # more than one batch and page
    batch_put(url, token, [*items, ("pre", "the prefix itself"), ("prefix/other", 0)])
    common = ("--url", url, "--token", token)
    assert cli("count", "pre", *common).stdout.strip() == "1500"
    got = cli("get", "--prefix", "pre", *common)
    lines = got.stdout.splitlines()
    assert got.returncode == 0 and len(lines) == 1500, got.stderr
    assert lines[0] == 'pre/00000\t{"n":0}' and lines[-1] == 'pre/01499\t{"n":1499}'
    limited = cli("get", "pre", "--prefix", "--json", "--limit", "3", *common)
    records = [json.loads(line) for line in limited.stdout.splitlines()]
    assert [r["key"] for r in records] == ["pre/00000", "pre/00001", "pre/00002"]
    assert records[1]["value"] == {"n": 1} and len(records[1]["uuid"]) == 36

    refused = cli("rm", "--prefix", "pre", *common)  # stdin is no terminal: --yes needed
    assert refused.returncode == 2 and "would delete 1500 keys: add --yes" in refused.stderr
    assert cli("count", "pre", *common).stdout.strip() == "1500"
    done = cli("rm", "--prefix", "pre", "--yes", *common)
    assert done.returncode == 0 and done.stdout.strip() == "deleted 1500 keys under pre/"
    assert done.stderr == ""  # no progress bar in a pipe
    assert cli("count", "pre", *common).stdout.strip() == "0"
    # The prefix is a folder: the key `pre` itself and `prefix/other` are untouched.
    assert json.loads(cli("get", "pre", *common).stdout) == "the prefix itself"
    assert cli("get", "prefix/other", *common).returncode == 0
    assert cli("rm", "--prefix", "pre", "--yes", *common).stdout.strip() == "no keys under pre/"
    anonymous = cli("rm", "--prefix", "prefix", "--yes", "--url", url)
    assert anonymous.returncode == 1 and "--token TOKEN or $KVS_TOKEN" in anonymous.stderr


# --- dump and load ------------------------------------------------------------------------


def test_dump_load_round_trip_of_10000_keys_into_an_empty_cluster(
    live: LiveCluster, cli: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    url, token = live.url("node2"), live.root_token()
    items: list[tuple[str, Any]] = [
        (f"trip/{i % 7}/k{i:05d}", {"i": i, "f": i / 8, "s": "é✓" * (i % 3), "l": [i, None]})
        for i in range(10_000)
    ]
    batch_put(url, token, items)
    with client() as c:  # a few with a TTL: their absolute expiry travels
        for i in range(3):
            answer = c.put(
                f"{url}/kv/trip/ttl/{i}",
                params={"ttl": "1h"},
                json=i,
                headers={"Authorization": f"Bearer {token}"},
            )
            assert answer.status_code == 200
    first = tmp_path_factory.mktemp("dump") / "first.jsonl"
    dumped = cli("dump", "trip", "-o", str(first), "--url", url, "--token", token)
    assert dumped.returncode == 0 and dumped.stderr == f"dumped 10003 keys to {first}\n"
    lines = first.read_bytes().splitlines()
    assert len(lines) == 10_003
    assert lines[0] == b'{"key":"trip/0/k00000","value":{"i":0,"f":0.0,"s":"","l":[0,null]}}'
    assert json.loads(lines[-1])["expires_at"] > 0

    empty = LiveCluster(tmp_path_factory.mktemp("empty"), names=("node1",), auth=True)
    try:
        empty.start()
        other, other_token = empty.url("node1"), empty.root_token()
        loaded = kvs_process("load", str(first), "--url", other, "--token", other_token)
        assert loaded.returncode == 0, loaded.stderr
        assert loaded.stdout.strip() == "loaded 10003 keys" and loaded.stderr == ""
        again = cli("dump", "trip", "--url", other, "--token", other_token)  # to stdout
        assert again.returncode == 0 and again.stderr == ""
        assert again.stdout.encode() == first.read_bytes()  # byte-identical
    finally:
        empty.cluster.stop()


def test_load_refuses_a_malformed_line_by_number_and_resumes(
    live: LiveCluster, cli: Any, tmp_path: Path
) -> None:
    url, token = live.url("node3"), live.root_token()
    common = ("--url", url, "--token", token)
    good = [json.dumps({"key": f"resume/{i:04d}", "value": i}) for i in range(2500)]
    broken = tmp_path / "broken.jsonl"
    broken.write_text("\n".join([*good[:2200], '{"key": "resume/x",', *good[2200:]]) + "\n")
    stopped = cli("load", str(broken), *common)
    assert stopped.returncode == 1
    assert "line 2201: not JSON" in stopped.stderr
    assert "2000 keys written, nothing past line 2000" in stopped.stderr
    assert f"kvs load {broken} --from-line 2001" in stopped.stderr
    assert cli("count", "resume", *common).stdout.strip() == "2000"  # whole batches only

    fixed = tmp_path / "fixed.jsonl"
    fixed.write_text("\n".join([*good[:2200], '{"key": "resume/x", "value": "x"}', *good[2200:]]))
    resumed = cli("load", str(fixed), "--from-line", "2001", *common)
    assert resumed.returncode == 0 and resumed.stdout.strip() == "loaded 501 keys"
    assert cli("count", "resume", *common).stdout.strip() == "2501"

    # A line the node refuses (a reserved key) is named by its number; its batch is not written.
    refused = tmp_path / "refused.jsonl"
    refused.write_text('{"key": "refused/a", "value": 1}\n{"key": "refused/_b", "value": 2}\n')
    answer = cli("load", str(refused), *common)
    assert answer.returncode == 1 and "line 2: 400 op 1: invalid key" in answer.stderr
    assert cli("count", "refused", *common).stdout.strip() == "0"
    for text, why in (
        ('{"key": "k"}\n', "line 1: expected"),
        ('{"key": "k", "value": 1, "colour": 2}\n', "line 1: unknown field(s) colour"),
        ('{"key": "k", "value": 1, "expires_at": "soon"}\n', "line 1: expires_at must be"),
        ('{"key": "k", "value": 1, "mode": "0x1000"}\n', "line 1: mode must be hex"),
        ('[{"key": "k", "value": "%%%"}]', "line 1: consul entry: value is not base64"),
    ):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(text)
        result = cli("load", str(bad), *common)
        assert result.returncode == 1 and why in result.stderr, (text, result.stderr)
    assert cli("load", str(tmp_path / "absent.jsonl"), *common).returncode == 2


def test_load_reads_a_consul_export_and_metadata_travels(
    live: LiveCluster, cli: Any, tmp_path: Path
) -> None:
    url, token = live.url("node1"), live.root_token()
    common = ("--url", url, "--token", token)

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    export = [
        {"key": "consul/", "flags": 0, "value": None},  # a folder
        {"key": "consul/json", "flags": 0, "value": b64(b'{"port": 8080}')},
        {"key": "consul/text", "flags": 0, "value": b64(b"plain text")},
    ]
    path = tmp_path / "consul.json"
    path.write_text(json.dumps(export, indent=2))
    loaded = cli("load", str(path), *common)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "loaded 2 keys", loaded.stderr
    got = cli("get", "--prefix", "consul", *common).stdout.splitlines()
    assert got == ['consul/json\t{"port":8080}', 'consul/text\t"plain text"']

    group = json.loads(cli("group", "create", "movers", "--json", *common).stdout)["uuid"]
    user = json.loads(cli("user", "create", "mover", "--json", *common).stdout)["uuid"]
    meta = tmp_path / "meta.jsonl"
    meta.write_text(
        json.dumps({"key": "meta/a", "value": 1, "owner": user, "group": group, "mode": "0xf11"})
    )
    assert cli("load", str(meta), *common).returncode == 0
    line = cli("dump", "meta", "--with-metadata", *common).stdout
    assert json.loads(line) == {
        "key": "meta/a",
        "value": 1,
        "owner": user,
        "group": group,
        "mode": "0xf11",
    }


# --- names and scope presets ----------------------------------------------------------------


def test_users_and_groups_by_name_and_scope_presets(live: LiveCluster, cli: Any) -> None:
    url, token = live.url("node2"), live.root_token()
    common = ("--url", url, "--token", token)
    staff = json.loads(cli("group", "create", "staff", "--json", *common).stdout)["uuid"]
    alice = cli("user", "create", "alice", "--group", "staff", "--json", *common)
    assert alice.returncode == 0, alice.stderr
    alice_uuid = json.loads(alice.stdout)["uuid"]
    assert json.loads(alice.stdout)["groups"] == [staff]
    shown = json.loads(cli("user", "show", "alice", "--json", *common).stdout)
    assert shown["uuid"] == alice_uuid
    assert json.loads(cli("group", "show", "staff", "--json", *common).stdout)["uuid"] == staff
    assert json.loads(cli("user", "show", alice_uuid, "--json", *common).stdout)["nickname"]

    unknown = cli("user", "show", "bob", *common)
    assert unknown.returncode == 1 and "no user named 'bob'" in unknown.stderr

    issued = cli("token", "create", "alice", "--scope", "read-write", "--json", *common)
    assert issued.returncode == 0, issued.stderr
    admin = cli("token", "create", "alice", "--scope", "admin", "--json", *common)
    reader = cli("token", "create", "alice", "--scope", "read", *common).stdout.strip()
    assert cli("put", "names/x", "1", "--url", url, "--token", reader).returncode == 1
    listed = json.loads(cli("token", "list", "--user", "alice", "--json", *common).stdout)
    scopes = {t["id"]: sorted(t["scopes"]) for t in listed["tokens"]}
    assert {t["user_uuid"] for t in listed["tokens"]} == {alice_uuid} and len(scopes) == 3
    assert scopes[json.loads(issued.stdout)["id"]] == ["delete", "read", "write"]
    assert scopes[json.loads(admin.stdout)["id"]] == sorted(ALL_SCOPES)
    assert ["read"] in scopes.values()

    twin = cli("user", "create", "alice", *common)
    assert twin.returncode == 0
    ambiguous = cli("user", "rm", "alice", *common)
    assert ambiguous.returncode == 1 and "2 users are named 'alice'" in ambiguous.stderr
    assert alice_uuid in ambiguous.stderr and "give the UUID" in ambiguous.stderr
    assert cli("user", "rm", alice_uuid, *common).returncode == 0
    gone = cli("user", "rm", "alice", *common)  # one alice left now: by name
    assert gone.returncode == 0 and gone.stdout.startswith("deleted user ")
    assert cli("group", "rm", "staff", *common).returncode == 0
    assert cli("group", "show", "staff", *common).returncode == 1
    assert httpx.URL(url).host == "127.0.0.1"


# --- the shell ---------------------------------------------------------------------------


def test_shell_reads_commands_piped_into_it(live: LiveCluster) -> None:
    url, url2, token = live.url("node1"), live.url("node2"), live.root_token()
    script = "\n".join(
        [
            "put shell/a '[1, \"one\"]'",
            "get shell/a",
            "# a comment, then an empty line",
            "",
            "gte shell/a",
            "put shell/b/c 2",
            "get --prefix shell",
            "count shell",
            f"connect {url2}",
            "get shell/b/c --json",
            "user show root --json",
            "get shell/none",
        ]
    )
    done = kvs_process("shell", "--url", url, "--token", token, stdin=script + "\n")
    out = done.stdout.splitlines()
    assert out[0].startswith("wrote shell/a (version ")
    assert json.loads("\n".join(out[1:5])) == [1, "one"]  # printed indented
    assert out[6:9] == ['shell/a\t[1,"one"]', "shell/b/c\t2", "2"]
    assert out[9] == f"connected to {url2}"
    assert done.stderr.splitlines() == [
        "kvs: 'gte' is not a shell command (did you mean 'get'?)",
        "kvs: 404 key not found",
    ]
    assert done.returncode == 1  # the last command's status
    assert "kvs>" not in done.stdout and token not in done.stdout + done.stderr
    leave = kvs_process("shell", "--url", url, stdin=f"auth {token}\ncount shell\nexit\nget x\n")
    assert leave.returncode == 0 and leave.stdout.splitlines() == [
        "token set for this session",
        "2",
    ]


def test_shell_completes_commands_and_key_paths(live: LiveCluster) -> None:
    from kvs.cli.shell import Session

    url, token = live.url("node3"), live.root_token()
    batch_put(url, token, [("tab/one", 1), ("tab/two/x", 2), ("tabby", 3)])
    args = argparse.Namespace(url=url, token=token, cacert=None, timeout=5.0)
    session = Session(args, main)
    assert session.candidates([], "ge") == ["get "]
    assert session.candidates([], "co") == ["connect ", "count "]
    assert "tab/" in session.candidates(["get"], "ta") and "tabby" in session.candidates(
        ["get"], "ta"
    )
    assert session.candidates(["get"], "tab/t") == ["tab/two/"]
    assert session.candidates(["rm", "--prefix"], "tab/") == ["tab/one", "tab/two/"]
    assert session.candidates(["members"], "ta") == []
    anonymous = Session(argparse.Namespace(url=url, token=None, cacert=None, timeout=5.0), main)
    assert anonymous.candidates(["get"], "ta") == []  # 401: nothing to offer, no error


def test_shell_on_a_terminal_prompts_completes_and_keeps_history(
    live: LiveCluster, tmp_path: Path
) -> None:
    """A real terminal (a pty): the prompt, Tab completing a command and a key path, and a
    history file without the token."""
    url, token = live.url("node1"), live.root_token()
    batch_put(url, token, [("ptyzone/a", 1), ("ptyzone/b", 2)])
    master, slave = pty.openpty()
    home = tmp_path / "home"
    shell = subprocess.Popen(
        [sys.executable, "-m", "kvs", "shell", "--url", url],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**os.environ, "TERM": "dumb", "KVS_HOME": str(home), "KVS_TOKEN": ""},
        close_fds=True,
    )
    os.close(slave)

    def read_until(needle: bytes, timeout: float = 60.0) -> bytes:
        seen, deadline = b"", time.monotonic() + timeout
        while needle not in seen and time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    seen += os.read(master, 4096)
                except OSError:
                    break
        assert needle in seen, seen
        return seen

    try:
        assert b"kvs> " in read_until(b"kvs> ")
        os.write(master, f"auth {token}\n".encode())
        read_until(b"kvs> ")
        os.write(master, b"cou\t ptyz\t\n")  # completes to `count  ptyzone/`
        answer = read_until(b"kvs> ")
        assert b"count  ptyzone/" in answer and b"\r\n2\r\n" in answer, answer
        os.write(master, b"exit\n")
        assert shell.wait(timeout=60) == 0
    finally:
        if shell.poll() is None:
            shell.kill()
        os.close(master)
    history = (home / "shell_history").read_text()
    assert "count  ptyzone/" in history and token not in history
    assert (home / "shell_history").stat().st_mode & 0o777 == 0o600


# --- progress where people wait -------------------------------------------------------------


def test_kvs_start_and_status_show_a_joining_nodes_progress(
    live: LiveCluster, cli: Any, tmp_path: Path
) -> None:
    """A fourth node joins by records, paced (`sync_throttle_delay`), started with `kvs
    start`: it says what it waits for, /health carries the bootstrap's progress, and `kvs
    status` shows it."""
    url, token = live.url("node1"), live.root_token()
    batch_put(url, token, [(f"join/{i:05d}", {"i": i}) for i in range(6000)])
    seed = live.specs["node1"].http_address
    config = init_config(
        tmp_path / "node4",
        cluster_secret=live.secret(),
        node_id="node4",
        auth_enabled=True,
        sync_throttle_delay="0.4s",
        sync_snapshot_min_keys=0,
    )
    config.write_text(config.read_text().replace("seed_nodes: []", f'seed_nodes: ["{seed}"]'))
    home = tmp_path / "home"
    env = {"KVS_HOME": str(home)}
    started = kvs_process("start", str(config), **env)
    try:
        assert started.returncode == 0, started.stderr
        assert "waiting up to 60 s for http://127.0.0.1:" in started.stderr
        assert "/health to answer as node node4" in started.stderr
        assert "auth is on; no root token in" in started.stdout  # a joiner gets none
        port = int(config_value(config, "port"))
        seen: list[dict[str, Any]] = []

        def progress_shown() -> bool:
            with client() as c:
                body = c.get(f"http://127.0.0.1:{port}/health").json()
            if body.get("mode") == "syncing" and "sync" in body:
                seen.append(body["sync"])
            return bool(seen) and seen[-1]["keys_received"] > 0

        wait_for("node4's /health shows its bootstrap's progress", progress_shown)
        progress = seen[-1]
        assert progress["keys_expected"] >= 6000 and progress["keys_per_s"] > 0
        assert progress["eta_s"] is None or progress["eta_s"] >= 0
        status = kvs_process("status", str(config), **env)
        assert status.returncode == 0, status.stderr
        # Still syncing (paced), or done by the time `kvs status` asked on a fast machine.
        assert " keys received (" in status.stdout or "ready on" in status.stdout, status.stdout

        def normal() -> bool:
            with client() as c:
                return c.get(f"http://127.0.0.1:{port}/health").json()["mode"] == "normal"

        wait_for("node4 completes its bootstrap", normal, timeout=120)
        with client() as c:
            assert "sync" not in c.get(f"http://127.0.0.1:{port}/health").json()
    finally:
        stopped = kvs_process("stop", str(config), **env)
        assert stopped.returncode == 0, stopped.stderr
