"""WXHOOK_HANDLERS plugs a developer's routers in front of the defaults."""

import sys
import types

import pytest

from handlers.defaults import default_router
from handlers.router import Router
from service.config import SettingsError
from service.replies import TextReply
from service.simulate import decode_reply


@pytest.fixture
def custom_module(monkeypatch):
    mod = types.ModuleType("my_account_handlers")
    mod.router = Router()

    @mod.router.message("text")
    async def echo(msg, ctx):
        return TextReply(f"You said: {msg.content}")

    mod.not_a_router = object()
    monkeypatch.setitem(sys.modules, "my_account_handlers", mod)
    return mod


async def test_custom_router_answers_before_defaults(make_app, make_settings, make_push,
                                                     custom_module):
    import httpx
    app = make_app(settings=make_settings(WXHOOK_HANDLERS="my_account_handlers:router"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        push = make_push("text", text="hi")
        r = await c.post("/wechat", params=push.params, content=push.body)
        sub = make_push("subscribe")
        s = await c.post("/wechat", params=sub.params, content=sub.body)
    assert decode_reply(r.content, crypto=None)["Content"] == "You said: hi"
    assert decode_reply(s.content, crypto=None)["Content"] == "Welcome, 刺猬宝宝!"


def test_bad_specs_are_refused(make_settings, custom_module):
    with pytest.raises(SettingsError, match="WXHOOK_HANDLERS"):
        make_settings(WXHOOK_HANDLERS="no-colon")
    with pytest.raises(TypeError):
        default_router("my_account_handlers:not_a_router")
