"""JWT tokens: HS256 with a signing key derived from the cluster secret, so every node of a
cluster verifies what any node issued. Only a hash of a token is ever stored."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

ALGORITHM = "HS256"
ISSUER = "kvs"
_KEY_LABEL = b"kvs jwt signing key v1"  # a new label gives an unrelated key (rotation, uses)
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "jti", "sub", "iss"]
LEEWAY_S = 5  # tolerated clock difference between the issuing and the verifying node


class TokenError(Exception):
    """A token that must be refused; the message is safe to show the client."""


def signing_key(cluster_secret: str) -> bytes:
    """HMAC-SHA256(cluster_secret, label): the secret itself never signs anything."""
    return hmac.new(cluster_secret.encode(), _KEY_LABEL, hashlib.sha256).digest()


def token_hash(token: str) -> str:
    """What is stored and what caches are keyed by (tokens have 128 bits of entropy: a plain
    SHA-256 is enough, no password hashing needed)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class Claims:
    user: str
    token_id: str
    issued_at: int
    expires_at: int


def issue(key: bytes, *, user: str, token_id: str, now_s: int, expires_in_s: int) -> str:
    payload = {
        "iss": ISSUER,
        "sub": user,
        "jti": token_id,
        "iat": now_s,
        "nbf": now_s,
        "exp": now_s + expires_in_s,
    }
    import jwt  # here, not at the top: pyjwt loads cryptography, a tenth of a second of start-up

    return jwt.encode(payload, key, algorithm=ALGORITHM)


def verify(key: bytes, token: str, now_s: float) -> Claims:
    """Check signature (HS256 only: `alg: none` and any other algorithm are refused), issuer,
    and exp/nbf/iat against `now_s` (the node's clock, so tests can move it); raise TokenError
    saying which check failed."""
    import jwt  # see issue()

    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[ALGORITHM],
            issuer=ISSUER,
            options={
                "require": REQUIRED_CLAIMS,
                "verify_exp": False,  # checked below against the node's clock
                "verify_nbf": False,
                "verify_iat": False,
            },
        )
    except jwt.InvalidSignatureError:
        raise TokenError("token signature is invalid") from None
    except jwt.InvalidAlgorithmError:
        raise TokenError("token algorithm is not allowed (HS256 only)") from None
    except jwt.MissingRequiredClaimError as exc:
        raise TokenError(f"token lacks the {exc.claim} claim") from None
    except jwt.InvalidTokenError:
        raise TokenError("token is malformed") from None
    sub, jti = claims.get("sub"), claims.get("jti")
    times = [claims.get(k) for k in ("iat", "nbf", "exp")]
    if not (isinstance(sub, str) and isinstance(jti, str)) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in times
    ):
        raise TokenError("token is malformed")
    iat, nbf, exp = times
    if exp <= now_s - LEEWAY_S:
        raise TokenError("token has expired")
    if nbf > now_s + LEEWAY_S or iat > now_s + LEEWAY_S:
        raise TokenError("token is not valid yet")
    return Claims(sub, jti, iat, exp)
