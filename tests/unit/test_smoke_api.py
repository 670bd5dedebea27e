"""A first end-to-end pass through the in-process API: put, get, delete."""


async def test_put_get_delete(client):
    response = await client.put("/kv/home/room/socks", data=b'{"colour": "red"}')
    assert response.status_code == 200
    written = await response.get_json()
    response = await client.get("/kv/home/room/socks")
    assert response.status_code == 200
    body = await response.get_json()
    assert body == {
        "uuid": written["uuid"],
        "timestamp": written["timestamp"],
        "data": {"colour": "red"},
    }
    assert response.headers["ETag"] == f'"{written["uuid"]}"'
    response = await client.delete("/kv/home/room/socks")
    assert response.status_code == 204
    response = await client.get("/kv/home/room/socks")
    assert response.status_code == 404
    assert (await response.get_json())["error"] == "key not found"
