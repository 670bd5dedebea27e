"""Every permission bit (Create, Delete, Write, Read) for every class (owner, group, others):
denied when clear (403), allowed when set, through the HTTP API (issue 5)."""

from __future__ import annotations

import json

import pytest

from kvs.auth.permissions import CREATE, DELETE, READ, WRITE, Principal, allows, nibble
from tests.support.api import client_of, expect_error
from tests.support.auth import Admin

SHIFT = {"owner": 8, "group": 4, "others": 0}
BITS = {"create": CREATE, "delete": DELETE, "write": WRITE, "read": READ}


async def _setup(start_node, permissions: int):
    node = await start_node(auth_enabled=True)
    admin = Admin(node)
    team = await admin.group("team")
    owner = await admin.actor("owner", [team])
    member = await admin.actor("member", [team])
    stranger = await admin.actor("stranger")
    client = client_of(node)
    assert (await client.put("/kv/p/k", data=b"1", headers=owner.headers)).status_code == 200
    body = json.dumps({"permissions": permissions}).encode()
    response = await client.put("/kv/p/k/metadata", data=body, headers=owner.headers)
    assert response.status_code == 200, await response.get_data()
    return client, {"owner": owner, "group": member, "others": stranger}


async def _attempt(client, actor, bit: str):
    if bit == "create":  # a new key below p/k needs Create on p/k
        return await client.put("/kv/p/k/child", data=b"2", headers=actor.headers)
    if bit == "delete":
        return await client.delete("/kv/p/k", headers=actor.headers)
    if bit == "write":
        return await client.put("/kv/p/k", data=b"3", headers=actor.headers)
    return await client.get("/kv/p/k", headers=actor.headers)


@pytest.mark.parametrize("who", ["owner", "group", "others"])
@pytest.mark.parametrize("bit", ["create", "delete", "write", "read"])
async def test_a_clear_bit_denies_with_403(start_node, who, bit):
    # Every bit of every class set, but the one under test.
    permissions = 0xFFF & ~(BITS[bit] << SHIFT[who])
    client, actors = await _setup(start_node, permissions)
    response = await _attempt(client, actors[who], bit)
    message = (await expect_error(response, 403))["error"]
    assert bit in message


@pytest.mark.parametrize("who", ["owner", "group", "others"])
@pytest.mark.parametrize("bit", ["create", "delete", "write", "read"])
async def test_the_bit_alone_allows(start_node, who, bit):
    # Only the bit under test, in the class under test (and the others' nibbles empty).
    client, actors = await _setup(start_node, BITS[bit] << SHIFT[who])
    response = await _attempt(client, actors[who], bit)
    assert response.status_code in (200, 204), await response.get_data()


async def test_batch_ops_are_checked_per_key(start_node):
    client, actors = await _setup(start_node, 0xF00)
    ops = {"ops": [{"op": "put", "key": "free", "data": 1}, {"op": "put", "key": "p/k", "data": 2}]}
    response = await client.post(
        "/kv/_batch", data=json.dumps(ops).encode(), headers=actors["others"].headers
    )
    body = await expect_error(response, 403)
    assert body["index"] == 1
    # nothing of a refused batch is applied
    assert (await client.get("/kv/free", headers=actors["owner"].headers)).status_code == 404


async def test_batch_checks_each_key_against_its_own_record_or_nearest_ancestor(start_node):
    """Many new keys under one ancestor (read once per batch) and keys of every other kind:
    each op gets the rule a single write would, and a new key is the caller's."""
    client, actors = await _setup(start_node, 0xF01)  # p/k: the owner all, others read
    owner, stranger = actors["owner"], actors["others"]

    async def post(actor, ops):
        body = json.dumps({"ops": ops}).encode()
        return await client.post("/kv/_batch", data=body, headers=actor.headers)

    children = [{"op": "put", "key": f"p/k/c{i}/leaf", "data": i} for i in range(5)]
    mine = children + [
        {"op": "put", "key": "p/k", "data": 0},  # Write on p/k
        {"op": "delete", "key": "p/k/absent"},
        {"op": "put", "key": "top", "data": 1},  # no ancestor: free to create
    ]
    assert (await post(owner, mine)).status_code == 200
    for key in ("p/k/c0/leaf", "p/k/c4/leaf", "top"):
        meta = await client.get(f"/kv/{key}/metadata", headers=owner.headers)
        assert (await meta.get_json())["owner_uuid"] == owner.uuid
    # The stranger may create outside p/k, not under it (op 2: its nearest ancestor is
    # p/k/c1/leaf, the owner's, not p/k), and may not write p/k itself.
    free = {"op": "put", "key": "elsewhere", "data": 1}
    for ops, refused in (
        ([free, free, {"op": "put", "key": "p/k/c1/leaf/x", "data": 1}], 2),
        ([free, {"op": "put", "key": "p/k", "data": 1}], 1),
        ([{"op": "delete", "key": "top"}], 0),
    ):
        body = await expect_error(await post(stranger, ops), 403)
        assert body["index"] == refused
    assert (await client.get("/kv/elsewhere", headers=owner.headers)).status_code == 404


def test_exactly_one_nibble_applies_as_in_unix():
    owner = Principal("u1", frozenset({"g"}), "g", frozenset(), "t", 0)
    member = Principal("u2", frozenset({"g"}), "g", frozenset(), "t", 0)
    other = Principal("u3", frozenset(), "", frozenset(), "t", 0)
    perms = 0x0F1  # owner nothing, group all, others read
    assert nibble(owner, "u1", "g", perms) == 0  # the owner does not fall back to group
    assert nibble(member, "u1", "g", perms) == 0xF
    assert nibble(other, "u1", "g", perms) == 0x1
    assert not allows(owner, "u1", "g", perms, READ)
    assert allows(other, "u1", "g", perms, READ)
    # a key without owner or group (written with auth off): only the others' nibble applies
    assert nibble(owner, "", "", 0xF31) == 1
