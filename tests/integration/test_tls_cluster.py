"""A TLS cluster that forms (issue 14): three real nodes serving HTTPS with a `trustme`
certificate join through `https://` seeds (checked against `tls_ca_file`), a fourth joins
with `kvs join https://...`, a write replicates to all four; `kvs start` on a TLS config
reports ready; client commands trust the node with `--cacert`/`KVS_CACERT` and refuse it,
in one line, without."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path

from tests.support.procs import (
    READY_TIMEOUT,
    KvsProcess,
    config_value,
    init_config,
    run_kvs,
    set_keys,
)
from tests.support.tls import Certs, https_client, make_certs, wait_https_ready

REPLICATION_TIMEOUT = 30.0


def _tls_config(directory: Path, certs: Certs, **overrides: object) -> Path:
    values: dict[str, object] = {
        "auth_enabled": True,
        "tls_cert_file": str(certs.cert),
        "tls_key_file": str(certs.key),
        "tls_ca_file": str(certs.ca),
    }
    return init_config(directory, **{**values, **overrides})


def _start(stack: ExitStack, config: Path, certs: Certs) -> KvsProcess:
    port = int(config_value(config, "port"))
    node = KvsProcess([str(config)], cwd=config.parent, port=port, log_dir=config.parent / "logs")
    stack.callback(node.kill)
    wait_https_ready(f"https://127.0.0.1:{port}", certs)
    return node


def _url(config: Path) -> str:
    return f"https://127.0.0.1:{config_value(config, 'port')}"


def test_a_tls_cluster_forms_from_https_seeds_and_kvs_join(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    home = tmp_path / "home"
    env = {"KVS_HOME": str(home), "KVS_URL": None, "KVS_TOKEN": None, "KVS_CACERT": None}
    first = _tls_config(tmp_path / "n1", certs)
    secret = config_value(first, "cluster_secret")
    seed = _url(first)
    others = [
        _tls_config(tmp_path / f"n{i}", certs, cluster_secret=secret, seed_nodes=[seed])
        for i in (2, 3)
    ]
    # `kvs start` on a TLS node reports ready (its probe speaks https and trusts its CA)
    started = run_kvs("start", str(first), cwd=tmp_path, env=env, timeout=120)
    try:
        assert started.returncode == 0, started.stderr
        assert f"on {seed};" in started.stdout, started.stdout
        status = run_kvs("status", str(first), cwd=tmp_path, env=env)
        assert status.returncode == 0 and f"ready on {seed}" in status.stdout, status.stdout
        token = (tmp_path / "n1" / "data" / "root.token").read_text().strip()
        with ExitStack() as stack:
            nodes = [_start(stack, c, certs) for c in others]
            # the fourth: `kvs join https://...` with options between the arguments
            (tmp_path / "n4").mkdir()
            (port4,) = [int(p) for p in _free(1)]
            joined = run_kvs(
                "join", seed, "--token", token, "--cacert", str(certs.ca), "--port",
                str(port4), "node4.yaml", cwd=tmp_path / "n4", env=env,
            )  # fmt: skip
            assert joined.returncode == 0, joined.stderr
            fourth = tmp_path / "n4" / "node4.yaml"
            assert f'"{seed}"' in fourth.read_text()  # the seed keeps its https scheme
            gossip4, sync4 = _free(2)
            set_keys(
                fourth,
                gossip_port=gossip4,
                sync_port=sync4,
                tls_cert_file=str(certs.cert),
                tls_key_file=str(certs.key),
            )
            nodes.append(_start(stack, fourth, certs))
            urls = [seed, *(_url(c) for c in [*others, fourth])]
            with https_client(certs, token) as client:
                _wait_members(client, urls, 4)
                put = client.put(f"{seed}/kv/tls/replicated", content=b'{"over": "https"}')
                assert put.status_code == 200, put.text
                _wait_value(client, urls, "tls/replicated", {"over": "https"})
            # a client command trusts the node with --cacert, and refuses it without
            get = ["get", "tls/replicated", "--url", seed, "--token", token]
            trusted = run_kvs(*get, "--cacert", str(certs.ca), cwd=tmp_path, env=env)
            assert trusted.returncode == 0, trusted.stderr
            assert '"over": "https"' in trusted.stdout
            by_env = run_kvs(*get, cwd=tmp_path, env={**env, "KVS_CACERT": str(certs.ca)})
            assert by_env.returncode == 0, by_env.stderr
            untrusted = run_kvs(*get, cwd=tmp_path, env=env)
            assert untrusted.returncode == 1
            assert "Traceback" not in untrusted.stderr
            assert len(untrusted.stderr.strip().splitlines()) == 1, untrusted.stderr
            assert "not trusted" in untrusted.stderr and "--cacert" in untrusted.stderr
            missing = run_kvs(*get, "--cacert", str(tmp_path / "nope.pem"), cwd=tmp_path, env=env)
            assert missing.returncode == 2 and "--cacert" in missing.stderr, missing.stderr
            for node in nodes:
                assert "Traceback" not in node.stderr()
                assert secret not in node.stderr() and token not in node.stderr()
    finally:
        run_kvs("stop", str(first), cwd=tmp_path, env=env, timeout=60)


def test_an_https_seed_with_an_untrusted_certificate_is_not_joined(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    other_ca = make_certs(tmp_path / "other")
    first = _tls_config(tmp_path / "n1", certs)
    joiner = _tls_config(
        tmp_path / "n2",
        certs,
        cluster_secret=config_value(first, "cluster_secret"),
        seed_nodes=[_url(first)],
        tls_ca_file=str(other_ca.ca),  # trusts another CA: the seed's certificate fails
    )
    with ExitStack() as stack:
        _start(stack, first, certs)
        node = _start(stack, joiner, certs)
        deadline = time.monotonic() + READY_TIMEOUT
        while "certificate is not trusted" not in node.stderr():
            assert time.monotonic() < deadline, node.stderr()
            time.sleep(0.2)
        assert "Traceback" not in node.stderr()


def _free(count: int) -> list[int]:
    from kvs.testing.ports import free_ports

    return list(free_ports(count))


def _wait_members(client: object, urls: list[str], count: int) -> None:
    import httpx

    assert isinstance(client, httpx.Client)
    deadline = time.monotonic() + REPLICATION_TIMEOUT
    while True:
        alive = []
        for url in urls:
            members = client.get(f"{url}/members/").json()
            alive.append(sum(1 for m in members if m.get("state") == "alive"))
        if alive == [count] * len(urls):
            return
        assert time.monotonic() < deadline, f"alive members per node: {alive}"
        time.sleep(0.2)


def _wait_value(client: object, urls: list[str], key: str, value: object) -> None:
    import httpx

    assert isinstance(client, httpx.Client)
    deadline = time.monotonic() + REPLICATION_TIMEOUT
    for url in urls:
        while True:
            answer = client.get(f"{url}/kv/{key}")
            if answer.status_code == 200 and answer.json().get("data") == value:
                break
            assert time.monotonic() < deadline, f"{url}: {answer.status_code} {answer.text}"
            time.sleep(0.1)
