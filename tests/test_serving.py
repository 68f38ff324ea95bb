"""What `wxhook serve` checks and says at start-up (service/serving.py)."""

from __future__ import annotations

import json

import pytest

from tests.support import sandbox_process, server_process
from wxhook.server.serving import insecure_base_url


@pytest.mark.parametrize(("url", "insecure"), [
    ("https://wx.example.com", False),
    ("https://203.0.113.7:8443", False),
    ("http://wx.example.com", True),
    ("http://203.0.113.7", True),
    ("http://[2001:db8::1]:8000", True),
    ("http://0.0.0.0:8000", True),
    ("http://localhost.example.com", True),      # a name that only starts like loopback
    ("http://127.0.0.1.example.com", True),
    ("http://localhost:8000", False),
    ("http://LOCALHOST:8000", False),
    ("http://127.0.0.1:8000", False),
    ("http://127.8.9.10", False),                 # all of 127.0.0.0/8
    ("http://[::1]:8000", False),
])
def test_plain_http_is_insecure_unless_loopback(url, insecure):
    assert insecure_base_url(url) is insecure


def _warnings(log_text: str) -> list[dict[str, str]]:
    lines = []
    for line in log_text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("event") == "public_base_url_not_https":
            lines.append(event)
    return lines


@pytest.mark.slow
@pytest.mark.parametrize(("url", "warned"), [("http://wx.example.com", 1),
                                             ("https://wx.example.com", 0),
                                             ("http://127.0.0.1:8000", 0)])
def test_serve_warns_once_at_start_up_about_a_plain_http_base_url(tmp_path, url, warned):
    log = tmp_path / "server.log"
    with sandbox_process() as api, server_process(api, log_path=log, PUBLIC_BASE_URL=url):
        pass
    lines = _warnings(log.read_text())
    assert len(lines) == warned
    for line in lines:
        assert line["level"] == "warning" and line["setting"] == "PUBLIC_BASE_URL"
        assert "https://" in line["fix"]
