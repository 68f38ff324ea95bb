"""The command line: every option says what it does and its default."""

import argparse

import pytest

from wxhook.tools.cli import build_parser


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_option_has_a_description_and_shows_its_default(name):
    parser = _subcommands()[name]
    text = parser.format_help()
    assert parser.description, name
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{name} {action.option_strings or action.dest}"
        if action.option_strings and action.default not in (None, False, "", 0.0) \
                and not isinstance(action, argparse._StoreTrueAction):
            assert f"(default: {action.default})" in " ".join(text.split()), (name, action.dest)


def test_the_documented_defaults():
    text = " ".join(_subcommands()["serve"].format_help().split())
    assert "--port PORT port to listen on (default: 8000)" in text
    assert "needs REDIS_URL" in text
    assert "--insecure" in _subcommands()["simulate"].format_help()
    assert "EnvironmentFile=" in _subcommands()["check"].format_help()


async def _client_seen(app, path: str, peer: str) -> tuple[str, str]:
    seen: dict[str, object] = {}

    async def inner(scope, receive, send):
        seen.update(client=scope["client"][0], scheme=scope["scheme"])
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    from wxhook.server.serving import _BehindProxy

    wrapped = _BehindProxy(inner, app)
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "GET", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "client": (peer, 50000),
             "server": ("127.0.0.1", 8000),
             "headers": [(b"x-forwarded-for", b"203.0.113.9"),
                         (b"x-forwarded-proto", b"https")]}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        pass

    await wrapped(scope, receive, send)
    return str(seen["client"]), str(seen["scheme"])


@pytest.mark.parametrize(("trusted", "peer", "path", "expect"), [
    ("127.0.0.1", "127.0.0.1", "/oauth/login", ("203.0.113.9", "https")),  # nginx on the host
    ("127.0.0.1", "198.51.100.7", "/oauth/login", ("198.51.100.7", "http")),  # not the proxy
    ("10.0.0.0/8", "10.1.2.3", "/oauth/callback", ("203.0.113.9", "https")),  # a proxy subnet
    ("127.0.0.1", "127.0.0.1", "/wechat", ("203.0.113.9", "https")),  # the push path alike
])
async def test_forwarded_headers_are_believed_from_the_trusted_proxy_only(trusted, peer, path,
                                                                          expect):
    assert await _client_seen(trusted, path, peer) == expect


def test_dev_keeps_sandbox_profiles_in_a_file_of_their_own(tmp_path, monkeypatch):
    from wxhook.tools.cli import dev_settings

    (tmp_path / ".env").write_text("WECHAT_APP_ID=wxreal0000000001\nWECHAT_APP_SECRET=s\n"
                                   "WECHAT_TOKEN=abc\n")
    settings = dev_settings(port=8000, sandbox_base="http://127.0.0.1:8001")
    assert settings.profile_db == "var/profiles-sandbox.sqlite3"
    assert settings.app_id == "wxreal0000000001"  # dev with the real account's settings
    monkeypatch.setenv("WXHOOK_PROFILE_DB", str(tmp_path / "mine.sqlite3"))
    chosen = dev_settings(port=8000, sandbox_base="http://127.0.0.1:8001")
    assert chosen.profile_db == str(tmp_path / "mine.sqlite3")
