"""Reaching the node of a config on this host (`kvs start`, `kvs status`, `kvs admin
recover`): its base URL in its own scheme, and what to trust for its certificate.

The probe dials the node's bind address (loopback for a wildcard), so the certificate
rarely names the address dialled (a certificate for `kvs1.example.com` served on
`0.0.0.0`): the host name is not checked. The chain is: it must verify against
`tls_ca_file`, the system's store, or the node's own certificate file (pinned, a partial
chain is enough), so a process holding another certificate on that port is not taken for
the node; and /health must name the config's `node_id`.
"""

from __future__ import annotations

import ssl
from typing import Any


def base_url(config: Any) -> str:
    """`http(s)://host:port` of the node of `config`, as reached from its own host."""
    host = config.bind_address
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    scheme = "https" if config.tls_cert_file else "http"
    return f"{scheme}://{host}:{config.port}"


def trust(config: Any) -> ssl.SSLContext | bool:
    """What verifies the node's certificate (see the module's docstring); True for http."""
    if not config.tls_cert_file:
        return True
    context = ssl.create_default_context()
    context.check_hostname = False  # we dialled our own node's address, not a name
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    context.load_verify_locations(cafile=str(config.file_path(config.tls_cert_file)))
    if config.tls_ca_file:
        context.load_verify_locations(cafile=str(config.file_path(config.tls_ca_file)))
    return context


def health(config: Any, timeout: float = 1.0) -> dict[str, Any] | None:
    """This node's /health answer (not some other process's on its port), or None."""
    import httpx

    try:
        response = httpx.get(
            base_url(config) + "/health", timeout=timeout, verify=trust(config), trust_env=False
        )
        body = response.json()
    except (httpx.HTTPError, ValueError, OSError):
        return None
    if response.status_code != 200 or not isinstance(body, dict):
        return None
    return body if body.get("node_id") == config.node_id else None


def answers(config: Any, timeout: float = 1.0) -> bool:
    """Whether this node (not some other process on its port) answers /health."""
    return health(config, timeout) is not None
