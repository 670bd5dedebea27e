"""kvs.client with authentication on (a real node on a real socket): users, groups and tokens
through the client, typed 401/403 errors, and watch and /metrics behind the token."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import trio

from kvs import client as kc
from kvs.cli import main
from kvs.client import AsyncClient, Event
from tests.support.auth import root_token
from tests.support.live_node import start_live_node


async def test_users_groups_tokens_through_the_client(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    node, url = await start_live_node(nursery, tmp_path, auth_enabled=True)
    async with AsyncClient(url, token=root_token(node)) as root:
        group = await root.create_group("staff")
        user = await root.create_user("alice", [group["uuid"]])
        assert user["nickname"] == "alice" and user["groups"] == [group["uuid"]]
        assert (await root.user(user["uuid"]))["nickname"] == "alice"
        assert "alice" in {u["nickname"] for u in await root.users()}
        renamed = await root.update_user(user["uuid"], nickname="alice2")
        assert renamed["nickname"] == "alice2"
        staff = await root.update_group(group["uuid"], members=[user["uuid"]])
        assert staff["members"] == [user["uuid"]] and (await root.group(group["uuid"]))
        assert group["uuid"] in {g["uuid"] for g in await root.groups()}

        issued = await root.create_token(user["uuid"], ["read", "write"], expires_in="1h")
        assert issued["token"] and issued["id"]
        listed = await root.tokens(user["uuid"])
        assert [t["id"] for t in listed] == [issued["id"]] and "token" not in listed[0]

        async with AsyncClient(url, token=issued["token"]) as alice:
            await alice.put("notes/a", {"n": 1})
            assert (await alice.get("notes/a")).data == {"n": 1}
            with pytest.raises(kc.Forbidden):
                await alice.users()  # no admin scope
            with pytest.raises(kc.Forbidden):
                await alice.delete("notes/a")  # no delete scope
            await root.revoke_token(issued["id"])
            with trio.fail_after(10):
                while True:
                    try:
                        await alice.get("notes/a")
                    except kc.Unauthorized as exc:
                        assert exc.status == 401 and exc.message
                        break
                    await trio.sleep(0.05)

        await root.delete_user(user["uuid"])
        with pytest.raises(kc.NotFound):
            await root.user(user["uuid"])
        await root.delete_group(group["uuid"])
    async with AsyncClient(url) as anonymous:
        with pytest.raises(kc.Unauthorized):
            await anonymous.get("notes/a")
        with pytest.raises(kc.Unauthorized):
            await anonymous.members()


async def test_watch_and_metrics_need_a_token_and_respect_permissions(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    node, url = await start_live_node(nursery, tmp_path, auth_enabled=True)
    async with AsyncClient(url, token=root_token(node)) as root:
        user = await root.create_user("reader")
        reader = (await root.create_token(user["uuid"], ["read"]))["token"]
        writer_only = (await root.create_token(user["uuid"], ["write"]))["token"]
        secret = await root.put("w/secret", 1)
        await root.set_metadata("w/secret", permissions=0xF00)  # owner (root) only
        public = await root.put("w/public", 2)  # default bits: others may read

        async with httpx.AsyncClient(base_url=url) as http:
            assert (await http.get("/metrics")).status_code == 401
            ok = await http.get("/metrics", headers={"Authorization": f"Bearer {reader}"})
            assert ok.status_code == 200 and "kvs_keys" in ok.text
        async with AsyncClient(url) as anonymous:
            with pytest.raises(kc.Unauthorized):
                async for _ in anonymous.watch("w"):
                    pass
        async with AsyncClient(url, token=writer_only) as no_read:
            with pytest.raises(kc.Forbidden):
                async for _ in no_read.watch("w"):
                    pass

        seen: list[Event] = []
        async with AsyncClient(url, token=reader) as watcher:
            with trio.fail_after(10):
                async for event in watcher.watch("w", since=0):
                    seen.append(event)
                    if len(seen) == 1:
                        await root.put("w/secret", 3)  # live, still unreadable for them
                        await root.put("w/public", 4)
                    if len(seen) == 2:
                        break
        assert [e.key for e in seen] == ["w/public", "w/public"]
        assert seen[0].uuid == public.uuid and secret.uuid not in {e.uuid for e in seen}


async def test_cli_user_group_token_commands(
    nursery: trio.Nursery, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    node, url = await start_live_node(nursery, tmp_path, auth_enabled=True)
    root = root_token(node)

    async def kvs(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = await trio.to_thread.run_sync(main, [*args, "--url", url])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = await kvs("group", "create", "staff", "--json", "--token", root)
    assert code == 0
    group = json.loads(out)["uuid"]
    code, out, _ = await kvs("user", "create", "bob", "--group", group, "--json", "--token", root)
    user = json.loads(out)["uuid"]
    code, out, _ = await kvs("user", "list", "--token", root)
    assert code == 0 and out.splitlines()[0].split() == ["UUID", "NICKNAME", "GROUPS"]
    assert any(line.split()[:3] == [user, "bob", group] for line in out.splitlines())
    code, out, err = await kvs("token", "create", user, "--scope", "read", "--token", root)
    assert code == 0 and "expires 20" in err  # a real date, not 1970
    token = out.strip()
    assert len(out.splitlines()) == 1 and token.count(".") == 2  # the JWT alone on stdout
    code, out, _ = await kvs("token", "list", "--user", user, "--json", "--token", root)
    (listed,) = json.loads(out)["tokens"]  # the documented object
    code, out, err = await kvs("get", "nothing", "--token", token)
    assert code == 1 and err.strip() == "kvs: 404 key not found"
    code, _, err = await kvs("user", "list", "--token", token)
    assert code == 1 and err.startswith("kvs: 403 ")
    code, _, err = await kvs("user", "list")
    assert code == 1 and err.startswith("kvs: 401 ") and "--token TOKEN or $KVS_TOKEN" in err
    code, out, _ = await kvs("token", "revoke", listed["id"], "--token", root)
    assert code == 0 and out.strip() == f"revoked token {listed['id']}"
    code, out, _ = await kvs("user", "rm", user, "--token", root)
    assert code == 0 and out.strip() == f"deleted user {user}"
    code, _, _ = await kvs("group", "rm", group, "--token", root)
    assert code == 0
