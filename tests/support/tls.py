"""TLS for real-process tests: a `trustme` CA and a node certificate for 127.0.0.1 and
localhost, and polling a node over https."""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import trustme

from tests.support.procs import READY_TIMEOUT


@dataclass(frozen=True)
class Certs:
    ca: Path  # the CA's certificate (PEM): what clients trust
    cert: Path  # the node's key and certificate chain
    key: Path


def make_certs(directory: Path) -> Certs:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    certs = Certs(directory / "ca.pem", directory / "node.pem", directory / "node.key")
    ca.cert_pem.write_to_path(str(certs.ca))
    issued.private_key_and_cert_chain_pem.write_to_path(str(certs.cert))
    issued.private_key_pem.write_to_path(str(certs.key))
    return certs


def https_client(certs: Certs, token: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    context = ssl.create_default_context(cafile=str(certs.ca))
    return httpx.Client(verify=context, trust_env=False, timeout=5.0, headers=headers)


def wait_https_ready(url: str, certs: Certs, timeout: float = READY_TIMEOUT) -> None:
    """Poll `url`/health over https (trusting the test CA) until it answers 200."""
    deadline = time.monotonic() + timeout
    with https_client(certs) as client:
        while True:
            try:
                if client.get(f"{url}/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{url} not ready after {timeout} s"
            time.sleep(0.1)
