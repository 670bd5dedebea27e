"""kvs.net.seeds: the /cluster/info proof of the cluster secret refuses every malformed header."""

from __future__ import annotations

import pytest

from kvs.net.seeds import MAX_SKEW_MS, auth_header_value, verify_auth

NOW = 1_800_000_000_000


def test_a_fresh_proof_of_the_secret_is_accepted() -> None:
    assert verify_auth("s3cret", auth_header_value("s3cret", NOW), NOW + 1000)


def test_a_stale_or_foreign_proof_is_refused() -> None:
    assert not verify_auth("s3cret", auth_header_value("s3cret", NOW), NOW + MAX_SKEW_MS + 1)
    assert not verify_auth("s3cret", auth_header_value("other", NOW), NOW)


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        ".",
        "abc",
        f"{NOW}",
        "\u00b2.0",  # str.isdigit() takes it, int() does not
        "9" * 5000 + ".0",  # int() refuses 4,300+ digits
        f"{NOW}.\u00fc",  # compare_digest refuses non-ASCII str
        f"{NOW}.\udcff",
        f"-{NOW}.00",
        f"{NOW}." + "0" * 64,
    ],
)
def test_malformed_proofs_are_refused_without_raising(value: str | None) -> None:
    assert verify_auth("s3cret", value, NOW) is False
