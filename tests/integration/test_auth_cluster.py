"""Auth across a real 3-node cluster (scripts/cluster.py, auth on; issue 5): a token made on
node 1 authorizes on node 3; revoked on node 2 it is refused on every node within a second;
a key's metadata set on node 1 is enforced on node 2; `kvs join` fetches the secret; no node
logs a token or the cluster secret. One cluster serves the module; every wait is bounded."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kvs.testing import launcher
from tests.support.procs import KVS, config_value, run_kvs

# The revocation test asserts "refused on every node within 1 s" in wall-clock time, which
# an overloaded machine (the parallel part of the suite) can break without any bug.
pytestmark = pytest.mark.timing

TIMEOUT = 30.0  # replication takes milliseconds; generous for a loaded 2-core machine
NAMES = ("node1", "node2", "node3")


def wait_for(what: str, check: Callable[[], bool], timeout: float = TIMEOUT) -> float:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.02)
    return time.monotonic() - started


class AuthCluster:
    def __init__(self, directory: Path) -> None:
        self.lines: list[str] = []
        self.cluster = launcher.Cluster(directory, out=self.lines.append, auth=True)
        self.specs: dict[str, Any] = {}
        self.http = httpx.Client(timeout=5.0, trust_env=False)
        self.tokens_seen: list[str] = []

    def start(self) -> None:
        self.specs = {s.name: s for s in self.cluster.start(len(NAMES), base_port=0)}
        self.root = self.cluster.root_token()
        assert self.root

    def url(self, name: str) -> str:
        return str(self.specs[name].url)

    def call(self, name: str, method: str, path: str, token: str, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        return self.http.request(method, f"{self.url(name)}{path}", headers=headers, **kwargs)

    def make_actor(self, nickname: str, on: str = "node1") -> tuple[str, str, str]:
        user = self.call(on, "POST", "/api/users", self.root, json={"nickname": nickname})
        assert user.status_code == 201, user.text
        uuid = user.json()["uuid"]
        body = {"user_uuid": uuid, "scopes": ["read", "write", "delete"]}
        answer = self.call(on, "POST", "/api/tokens", self.root, json=body)
        assert answer.status_code == 201, answer.text
        token = answer.json()["token"]
        self.tokens_seen.append(token)
        return uuid, token, answer.json()["id"]


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthCluster]:
    live = AuthCluster(tmp_path_factory.mktemp("authcluster"))
    try:
        live.start()
        yield live
    finally:
        live.cluster.stop()
        live.http.close()
    # No token and no cluster secret in any node's log.
    secret = config_value(live.specs["node1"].config, "cluster_secret")
    for name in NAMES:
        log = live.specs[name].log.read_text(errors="replace")
        assert "Traceback" not in log, log
        assert secret not in log, f"cluster secret in {name}'s log"
        for token in [live.root, *live.tokens_seen]:
            assert token not in log, f"a token in {name}'s log"


def test_token_from_node1_authorizes_on_node3_and_revoked_on_node2_is_refused_within_1s(
    live: AuthCluster,
) -> None:
    _, token, token_id = live.make_actor("traveller")
    assert live.call("node1", "PUT", "/kv/travel/doc", token, content=b"1").status_code == 200
    wait_for(
        "the token works on node 3",
        lambda: live.call("node3", "GET", "/kv/travel/doc", token).status_code == 200,
    )
    wait_for(
        "the token works on node 2",
        lambda: live.call("node2", "GET", "/kv/travel/doc", token).status_code == 200,
    )
    revoked = live.call("node2", "DELETE", f"/api/tokens/{token_id}", live.root)
    assert revoked.status_code == 204, revoked.text
    started = time.monotonic()
    for name in NAMES:
        wait_for(
            f"{name} refuses the revoked token",
            lambda n=name: live.call(n, "GET", "/kv/travel/doc", token).status_code == 401,
            timeout=5.0,
        )
    elapsed = time.monotonic() - started
    assert elapsed < 1.0, f"revocation took {elapsed:.3f} s to reach every node"


def test_metadata_set_on_node1_is_enforced_on_node2(live: AuthCluster) -> None:
    _, owner, _ = live.make_actor("keeper")
    _, reader, _ = live.make_actor("peeker")
    assert live.call("node1", "PUT", "/kv/vault/gold", owner, content=b"1").status_code == 200
    wait_for(
        "others may read it on node 2 (0xF31)",
        lambda: live.call("node2", "GET", "/kv/vault/gold", reader).status_code == 200,
    )
    meta = live.call("node1", "PUT", "/kv/vault/gold/metadata", owner, json={"permissions": 0xF00})
    assert meta.status_code == 200 and meta.json()["permissions"] == 0xF00, meta.text
    wait_for(
        "node 2 refuses the reader",
        lambda: live.call("node2", "GET", "/kv/vault/gold", reader).status_code == 403,
    )
    assert live.call("node2", "GET", "/kv/vault/gold", owner).status_code == 200
    shown = live.call("node2", "GET", "/kv/vault/gold/metadata", owner).json()
    assert shown["permissions"] == 0xF00


def test_kvs_join_fetches_the_secret_with_an_admin_token_only(
    live: AuthCluster, tmp_path: Path
) -> None:
    url = live.url("node1")
    _, weak, _ = live.make_actor("weakling")
    refused = run_kvs("join", url, "--token", weak, str(tmp_path / "no.yaml"), cwd=tmp_path)
    assert refused.returncode == 1 and "403" in refused.stderr
    assert not (tmp_path / "no.yaml").exists()
    result = run_kvs("join", url, "--token", live.root, str(tmp_path / "new.yaml"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    target = tmp_path / "new.yaml"
    assert target.stat().st_mode & 0o777 == 0o600
    assert config_value(target, "cluster_secret") == config_value(
        live.specs["node1"].config, "cluster_secret"
    )
    assert live.specs["node1"].http_address in target.read_text()
    assert live.root not in result.stdout + result.stderr
    assert config_value(target, "cluster_secret") not in result.stdout + result.stderr


def test_members_needs_a_token_and_kvs_members_sends_kvs_token(
    live: AuthCluster, tmp_path: Path
) -> None:
    url = live.url("node2")
    assert live.http.get(f"{url}/members/").status_code == 401
    command = [*KVS, "members", "--url", url]
    env = {k: v for k, v in os.environ.items() if k != "KVS_TOKEN"}
    refused = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert refused.returncode != 0 and "401" in refused.stderr
    env["KVS_TOKEN"] = live.root
    shown = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert all(name in shown.stdout for name in NAMES)
