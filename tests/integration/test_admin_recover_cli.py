"""`kvs admin recover` on real processes (issue 14): with every token expired it prints a
working root token -- asking the running node, or writing to the stopped node's store -- on
stdout alone; the recovery is audited; a replayed or wrongly signed request is refused and
counted; no token reaches the node's log."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx

from kvs.auth.recovery import RECOVER_HEADER, recover_proof
from tests.support.procs import config_value, init_config, run_kvs, running, set_keys

EXPIRY_TIMEOUT = 60.0


def _status(url: str, token: str, path: str = "/api/users") -> int:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.get(url + path, headers=headers, timeout=5, trust_env=False).status_code


def _wait_refused(url: str, token: str) -> None:
    deadline = time.monotonic() + EXPIRY_TIMEOUT
    while _status(url, token) != 401:
        assert time.monotonic() < deadline, "the token never expired"
        time.sleep(0.5)


def _recover(config: Path) -> str:
    result = run_kvs("admin", "recover", str(config), cwd=config.parent, env={"KVS_TOKEN": None})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].count(".") == 2, result.stdout  # one JWT, nothing else
    assert lines[0] not in result.stderr
    return lines[0]


def test_admin_recover_on_a_running_and_on_a_stopped_node(tmp_path: Path) -> None:
    config = init_config(
        tmp_path / "n1", auth_enabled=True, tamper_logging_enabled=True, root_token_lifetime="2s"
    )
    secret = config_value(config, "cluster_secret")
    node_id = config_value(config, "node_id")
    issued: list[str] = []
    with running(config) as node:
        url = node.base_url
        first = (tmp_path / "n1" / "data" / "root.token").read_text().strip()
        issued.append(first)
        _wait_refused(url, first)  # every token has expired: locked out
        token = _recover(config)
        issued.append(token)
        assert _status(url, token) == 200
        # a captured request is refused when replayed; a wrong secret is refused; counted
        proof = recover_proof(secret, node_id, time.time_ns() // 1_000_000, os.urandom(16))
        once = httpx.post(f"{url}/api/admin/recover", headers={RECOVER_HEADER: proof})
        assert once.status_code == 200
        issued.append(once.json()["token"])
        replayed = httpx.post(f"{url}/api/admin/recover", headers={RECOVER_HEADER: proof})
        assert replayed.status_code == 401 and "replayed" in replayed.json()["error"]
        wrong = recover_proof("guess", node_id, time.time_ns() // 1_000_000, os.urandom(16))
        refused = httpx.post(f"{url}/api/admin/recover", headers={RECOVER_HEADER: wrong})
        assert refused.status_code == 401
        assert httpx.post(f"{url}/api/admin/recover").status_code == 401
        fresh = issued[-1]
        metrics = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {fresh}"}).text
        assert 'kvs_admin_recoveries_total{outcome="refused"} 3.0' in metrics
        assert 'kvs_admin_recoveries_total{outcome="issued"} 2.0' in metrics
        node.stop()
        log = node.stderr()
    # the node is stopped, every token it issued expires: recover from its store
    set_keys(config, root_token_lifetime="1h")
    offline = _recover(config)
    issued.append(offline)
    with running(config) as node:
        url = node.base_url
        for old in issued[:-1]:
            _wait_refused(url, old)
        assert _status(url, offline) == 200
        audit = httpx.get(
            f"{url}/api/audit?limit=1000", headers={"Authorization": f"Bearer {offline}"}
        ).json()["entries"]
        recoveries = [e for e in audit if e["action"] == "admin.recover"]
        assert len(recoveries) == 3
        assert "offline" in recoveries[-1]["target"]
        assert sum(1 for e in audit if "admin recovery refused" in e["detail"]) == 3
        node.stop()
        log += node.stderr()
    for token in issued:
        assert token not in log and token not in str(audit)
    assert secret not in log
    assert "admin recovery" in log  # logged, by its id


def test_admin_recover_refuses_bad_input_in_one_line(tmp_path: Path) -> None:
    missing = run_kvs("admin", "recover", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert missing.returncode == 2 and missing.stdout == ""
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    config = init_config(tmp_path / "n1", auth_enabled=True)
    never_started = run_kvs("admin", "recover", str(config), cwd=tmp_path)
    assert never_started.returncode == 1 and never_started.stdout == ""
    assert "holds no store" in never_started.stderr
    set_keys(config, auth_enabled=False)
    no_auth = run_kvs("admin", "recover", str(config), cwd=tmp_path)
    assert no_auth.returncode == 2 and "auth_enabled is false" in no_auth.stderr
