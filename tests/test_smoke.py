from wxhook.replies import SUCCESS


async def test_subscribe_greets_by_name(client, make_push, sandbox):
    push = make_push("subscribe")
    r = await client.post("/wechat", params=push.params, content=push.body)
    assert r.status_code == 200
    assert "Welcome, 刺猬宝宝!" in r.text
    assert sandbox.token_requests == 1
    assert r.content != SUCCESS
