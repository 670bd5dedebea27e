"""Finding a seed's gossip address from its HTTP address (the Go KVS `seed_nodes` form).

`seed_nodes` name HTTP API addresses: `https://host:port`, `http://host:port`, or a bare
`host:port` as in Go KVS configs (asked over the joiner's own default scheme). A joiner asks
the seed `GET /cluster/info` for its gossip address (over https, checking the seed's
certificate against the configured CA bundle or the system store), proving it holds the cluster secret with a
timestamped HMAC in the `X-KVS-Cluster-Auth` header (so the endpoint does not hand the
topology to strangers), then joins by push-pull over the authenticated gossip port.

With a keyring (`cluster_secret: [new, old]`) the joiner proves the first secret and a seed
accepts any of its secrets, as for gossip and sync.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence

from kvs.net.codec import derive_keys
from kvs.net.messages import Address

AUTH_HEADER = "X-KVS-Cluster-Auth"
MAX_SKEW_MS = 5 * 60 * 1000


_SEED_RE = re.compile(r"(?:(https?)://)?([^\s:/\[\]@]+|\[[0-9a-fA-F:.]+\]):(\d{1,5})/?")


def split_seed(entry: str) -> tuple[str, str, int]:
    """`(scheme, host, port)` of a seed: `https://host:port`, `http://host:port` or a bare
    `host:port` (scheme `""`: the caller picks one). IPv6 hosts come without brackets.
    Raises ValueError with a message for people."""
    match = _SEED_RE.fullmatch(entry.strip()) if isinstance(entry, str) else None
    if match is None:
        raise ValueError(
            f"{entry!r} is not a seed: use host:port, http://host:port or https://host:port"
        )
    scheme, host, port = match.group(1) or "", match.group(2).strip("[]"), int(match.group(3))
    if not 0 < port <= 65535:
        raise ValueError(f"{entry!r}: port {port} is not between 1 and 65535")
    return scheme, host, port


def _tag(key: bytes, stamp: str) -> str:
    return hmac.new(key, b"cluster-info:" + stamp.encode(), hashlib.sha256).hexdigest()


def auth_header_value(cluster_secret: str | Sequence[str], now_ms: int) -> str | None:
    """The header proving the first secret of the keyring (None without a secret)."""
    keys = derive_keys(cluster_secret, "http-join")
    if not keys:
        return None
    stamp = str(now_ms)
    return f"{stamp}.{_tag(keys[0], stamp)}"


def verify_auth(cluster_secret: str | Sequence[str], value: str | None, now_ms: int) -> bool:
    """True if `value` proves knowledge of one of the secrets within MAX_SKEW_MS (or there is
    no secret)."""
    keys = derive_keys(cluster_secret, "http-join")
    if not keys:
        return True
    if not value or "." not in value:
        return False
    stamp, _, tag = value.partition(".")
    # ASCII digits only (str.isdigit takes '²', which int() refuses), and no more of them than
    # a millisecond clock has (int() refuses 4,300+ digits).
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 16):
        return False
    if abs(int(stamp) - now_ms) > MAX_SKEW_MS:
        return False
    # compare_digest refuses a str with non-ASCII characters (TypeError): compare bytes.
    given = tag.encode("utf-8", "surrogateescape")
    return any(hmac.compare_digest(given, _tag(key, stamp).encode()) for key in keys)


def describe_http_error(exc: BaseException) -> str:
    """Why a request failed, in one line: an untrusted certificate says so (httpx on trio
    often carries the reason only in the exception's cause)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            reason = seen.verify_message or seen.reason or "verification failed"
            return f"its certificate is not trusted ({reason}): set tls_ca_file to its CA"
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def tls_client_context(ca_file: str | None, *, skip_verify: bool = False) -> ssl.SSLContext:
    """How a joiner checks an https seed: against `ca_file` (PEM bundle), or the system's
    CA store without one; `skip_verify` checks nothing (the caller warns about it)."""
    context = ssl.create_default_context(cafile=ca_file or None)
    if skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def http_seed_resolver(
    cluster_secret: Callable[[], Sequence[str]],
    wall_ms: Callable[[], int] | None = None,
    *,
    default_scheme: str = "http",
    tls: ssl.SSLContext | None = None,
) -> Callable[[str], Awaitable[Address]]:
    """A resolver asking a seed's HTTP API for its gossip address (httpx, on trio);
    `cluster_secret()` is the keyring at the time of asking (it may be reloaded). A seed
    without a scheme is asked over `default_scheme`; https seeds are checked with `tls`
    (default: the system's CA store)."""
    clock = wall_ms or (lambda: time.time_ns() // 1_000_000)
    verify: ssl.SSLContext | bool = tls if tls is not None else True

    async def resolve(seed: str) -> Address:
        import httpx  # here: a node that never asks a seed never loads it (~4 MB)

        headers = {}
        value = auth_header_value(cluster_secret(), clock())
        if value is not None:
            headers[AUTH_HEADER] = value
        scheme, host, port = split_seed(seed)
        shown = f"[{host}]" if ":" in host else host
        url = f"{scheme or default_scheme}://{shown}:{port}/cluster/info"
        # trust_env=False: a node started with HTTP(S)_PROXY/ALL_PROXY set (common on
        # company hosts) sent this lookup, and its replayable auth header, to the proxy;
        # cluster traffic is node to node, and a loopback or LAN seed is never reached
        # through a proxy.
        async with httpx.AsyncClient(timeout=5.0, trust_env=False, verify=verify) as client:
            try:
                response = await client.get(url, headers=headers)
            except httpx.HTTPError as exc:
                raise OSError(f"cannot reach {seed}: {describe_http_error(exc)}") from None
        if response.status_code == 401:
            raise OSError(f"seed {seed} refused our cluster secret (it belongs to another cluster)")
        if response.status_code != 200:
            raise OSError(f"seed {seed} answered {response.status_code}")
        try:
            info = response.json()
            gossip_host, gossip_port = info["gossip_address"].rsplit(":", 1)
            gossip_host = gossip_host.strip("[]")
            port = int(gossip_port)
            if not 0 < port <= 65535:
                raise ValueError("port out of range")
        except (ValueError, KeyError, TypeError, AttributeError):
            raise OSError(f"seed {seed} sent an unreadable /cluster/info") from None
        if gossip_host in ("0.0.0.0", "::"):
            gossip_host = host  # the seed listens everywhere: use the address we reached it at
        return gossip_host, port

    return resolve
