"""`wxhook check` as an operator reads it: what was tried, what it means, what to do; only
its own lines; the same settings as serve and sandbox (.env, --env-file)."""

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.support import (
    SANDBOX_APP_ID,
    SANDBOX_SECRET,
    TOKEN,
    WXHOOK,
    free_port,
    sandbox_process,
    server_env,
)

pytestmark = pytest.mark.slow

OWN_LINE = re.compile(r"wxhook check$|  \[(ok|FAIL|note)\] .+|         \w+: +.+|result: .+")


def check(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("WECHAT_", "WXHOOK_")) and k != "REDIS_URL"}
    return subprocess.run([WXHOOK, "check", *args], env={**base, **env}, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def only_its_own_lines(res: subprocess.CompletedProcess[str]) -> None:
    assert res.stderr == ""
    for line in res.stdout.splitlines():
        assert OWN_LINE.fullmatch(line), line


def test_an_unreachable_api_says_what_was_tried_and_what_to_do(tmp_path):
    port = free_port()  # nobody listens
    res = check(server_env(f"http://127.0.0.1:{port}"), tmp_path)
    assert res.returncode == 1
    only_its_own_lines(res)
    out = res.stdout
    assert "[FAIL] access token: ConnectError" in out
    assert f"tried:  POST http://127.0.0.1:{port}/cgi-bin/stable_token" in out
    assert "means:  nothing answered there" in out and "fix:" in out
    assert SANDBOX_SECRET not in out and "errcode None" not in out


def test_redis_down_is_named_with_the_url_masked(tmp_path):
    port = free_port()
    with sandbox_process() as api:
        res = check(server_env(api, REDIS_URL=f"redis://:redispassw0rd@127.0.0.1:{port}/0"),
                    tmp_path)
    assert res.returncode == 1
    only_its_own_lines(res)
    assert "[ok] access token" in res.stdout  # the API part passed; only Redis failed
    assert f"tried:  PING redis://***@127.0.0.1:{port}/0" in res.stdout
    assert "means:  nothing answered there: Redis is not running" in res.stdout
    assert "redispassw0rd" not in res.stdout and "StoreUnavailable" not in res.stdout


def test_sandbox_and_check_read_the_same_dotenv(tmp_path):
    """Credentials only in .env: the sandbox started there knows them, and check passes,
    saying it talked to a stand-in."""
    appid, secret = "wxowner0000000001", "owner-secret-in-dotenv"
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"WECHAT_APP_ID={appid}\nWECHAT_APP_SECRET={secret}\n"
                      f"WECHAT_TOKEN={TOKEN}\n")
    with sandbox_process(cwd=tmp_path) as api:
        dotenv.write_text(dotenv.read_text() + f"WECHAT_API_BASE={api}\n")
        res = check({}, tmp_path)
    assert res.returncode == 0, res.stdout
    only_its_own_lines(res)
    assert f"[note] stand-in API: WECHAT_API_BASE is {api}, not WeChat's" in res.stdout
    assert "result: ready to serve" in res.stdout and secret not in res.stdout


def test_a_stand_in_that_knows_another_account_gets_its_own_advice(tmp_path):
    with sandbox_process() as api:  # started elsewhere: the sandbox's own account
        res = check({"WECHAT_APP_ID": "wxowner0000000001", "WECHAT_APP_SECRET": "s-1",
                     "WECHAT_TOKEN": TOKEN, "WECHAT_API_BASE": api}, tmp_path)
    assert res.returncode == 1
    only_its_own_lines(res)
    assert "[FAIL] access token: errcode 40013" in res.stdout
    assert "means:  the stand-in knows one appid and secret" in res.stdout
    assert "start `wxhook sandbox` from this directory" in res.stdout


def test_env_file_reads_a_systemd_environment_file(tmp_path):
    with sandbox_process() as api:
        env_file = tmp_path / "wxhook.env"
        env_file.write_text(
            "# as installed from .env.example, then edited\n"
            f"WECHAT_APP_ID={SANDBOX_APP_ID}\n"
            f'WECHAT_APP_SECRET="{SANDBOX_SECRET}"\n'
            f"WECHAT_TOKEN=  {TOKEN}  \n"
            f"WECHAT_API_BASE={api}\n"
            "REDIS_URL=\n"
            "WXHOOK_GREETING=Welcome, {nickname}!\n"
            "WXHOOK_GREETING_ANONYMOUS='Hello there!'\n")
        (tmp_path / ".env").write_text("WECHAT_TOKEN=x!\n")  # not read with --env-file
        res = check({}, tmp_path, "--env-file", str(env_file))
        missing = check({}, tmp_path, "--env-file", str(tmp_path / "nope.env"))
    assert res.returncode == 0, res.stdout
    assert "result: ready to serve" in res.stdout
    assert missing.returncode == 2
    assert missing.stderr == (f"wxhook: cannot read --env-file {tmp_path / 'nope.env'}: "
                              "No such file or directory\n")


@pytest.mark.parametrize("url", ["redis://:pw9@qqhost:abc/0", "redis://:pw9@[qqhost/0",
                                 "redis://:pw9@qqhost/0?socket_timeout=zz"])
def test_a_redis_url_the_client_cannot_read_is_one_line_not_a_traceback(tmp_path, url):
    res = check({"WECHAT_APP_ID": "wx0000000000000001", "WECHAT_APP_SECRET": "s" * 32,
                 "WECHAT_TOKEN": "token1", "REDIS_URL": url}, tmp_path)
    assert res.returncode != 0
    only_its_own_lines(res)  # no traceback: its own lines only, and stderr empty
    assert "pw9" not in res.stdout and "qqhost" not in res.stdout
    assert "[FAIL] settings: invalid settings: REDIS_URL: not a usable redis:// URL" in res.stdout
