"""HTTPS for the API (issue 5): a real node serving a certificate made by `trustme`."""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path

import httpx
import pytest
import trustme

from tests.support.procs import (
    READY_TIMEOUT,
    KvsProcess,
    config_value,
    init_config,
)


@pytest.mark.parametrize("workers", [1, 2])
def test_node_serves_https_with_the_configured_certificate(tmp_path: Path, workers: int) -> None:
    """With `http_workers: 2` the worker serves the same certificate on the same port, and
    answers reads and writes (through the write link) over TLS like the node."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "node.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "node.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    config = init_config(
        tmp_path, tls_cert_file="node.pem", tls_key_file="node.key", http_workers=workers
    )
    port = int(config_value(config, "port"))
    node = KvsProcess([str(config)], cwd=tmp_path, port=port, log_dir=tmp_path / "logs")
    try:
        context = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        url = f"https://127.0.0.1:{port}"
        deadline = time.monotonic() + READY_TIMEOUT
        with httpx.Client(verify=context, trust_env=False, timeout=5) as client:
            while True:
                assert node.popen.poll() is None, node.stderr()
                try:
                    if client.get(f"{url}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, node.stderr()
                time.sleep(0.05)
            assert client.put(f"{url}/kv/tls/doc", content=b'{"a": 1}').status_code == 200
            assert client.get(f"{url}/kv/tls/doc").json()["data"] == {"a": 1}
        served: set[str] = set()
        # A new connection each time: the kernel picks the process (the worker starts a
        # moment after the node answers /health).
        deadline, i = time.monotonic() + READY_TIMEOUT, 0
        while served != {"node", "1"} and (workers == 2 or i < 5):
            assert time.monotonic() < deadline, (served, node.stderr())
            i += 1
            with httpx.Client(verify=context, trust_env=False, timeout=5) as client:
                put = client.put(f"{url}/kv/tls/{i}", content=b'{"i": 1}')
                assert put.status_code == 200, put.text
                served.add(put.headers.get("kvs-worker", "node"))
                assert client.get(f"{url}/kv/tls/{i}").json()["uuid"] == put.json()["uuid"]
        assert served == ({"node", "1"} if workers == 2 else {"node"}), served
        # HTTP/2 is not offered: a client asking for h2 by ALPN is given HTTP/1.1
        alpn = ssl.create_default_context(cafile=str(tmp_path / "ca.pem"))
        alpn.set_alpn_protocols(["h2", "http/1.1"])
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            alpn.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.selected_alpn_protocol() == "http/1.1"
        # a client that does not trust the CA refuses the connection
        with pytest.raises(httpx.ConnectError), httpx.Client(trust_env=False) as untrusting:
            untrusting.get(f"{url}/health")
        # and plain HTTP on the TLS port gets no answer
        with pytest.raises(httpx.HTTPError), httpx.Client(trust_env=False, timeout=3) as plain:
            plain.get(f"http://127.0.0.1:{port}/health")
    finally:
        node.kill()
