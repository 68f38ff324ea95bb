"""Settings: validated at start-up with messages that name the variable; secrets masked."""


import pytest

from wxhook.errors import SettingsError
from wxhook.server.config import load_settings, mask_url
from wxhook.server.store import topology

GOOD = {"WECHAT_APP_ID": "wx1234567890abcdef", "WECHAT_APP_SECRET": "s3cr3t-value-abcdef",
        "WECHAT_TOKEN": "Tok3n"}


def test_valid_settings_and_key_list():
    s = load_settings(_env_file=None, **GOOD,
                      WECHAT_ENCODING_AES_KEY="A" * 43 + ", " + "B" * 43)
    assert s.aes_keys == ["A" * 43, "B" * 43]
    assert s.token_endpoint == "stable" and s.deadline == 4.0


@pytest.mark.parametrize(("overrides", "expect"), [
    ({"WECHAT_TOKEN": "ab"}, "WECHAT_TOKEN: must be 3-32 characters"),
    ({"WECHAT_TOKEN": "has space"}, "WECHAT_TOKEN"),
    ({"WECHAT_ENCODING_AES_KEY": "A" * 42}, "WECHAT_ENCODING_AES_KEY: key #1 must be exactly 43"),
    ({"WECHAT_ENCODING_AES_KEY": "A" * 43 + ",short"}, "key #2"),
    ({"WECHAT_API_BASE": "ftp://x"}, "WECHAT_API_BASE"),
    ({"WXHOOK_DEADLINE": "9"}, "WXHOOK_DEADLINE"),
    ({"WXHOOK_GREETING": "Hello!"}, "must contain {nickname}"),
    ({"WECHAT_APP_SECRET": ""}, "missing WECHAT_APP_SECRET"),
    ({"WXHOOK_MESSAGE_MODE": "safe"}, "WXHOOK_MESSAGE_MODE=safe needs WECHAT_ENCODING_AES_KEY"),
    ({"WXHOOK_MESSAGE_MODE": "compat"}, "WXHOOK_MESSAGE_MODE=compat needs"),
    ({"WXHOOK_MESSAGE_MODE": "secure"}, "WXHOOK_MESSAGE_MODE"),
])
def test_errors_name_the_variable(overrides, expect):
    with pytest.raises(SettingsError) as exc:
        load_settings(_env_file=None, **{**GOOD, **overrides})
    assert expect in str(exc.value)


def test_errors_never_echo_secret_values():
    with pytest.raises(SettingsError) as exc:
        load_settings(_env_file=None, **{**GOOD, "WECHAT_TOKEN": "x!", "WECHAT_APP_SECRET": "s"})
    assert "x!" not in str(exc.value)


def test_secrets_are_masked_in_repr_and_summary():
    s = load_settings(_env_file=None, **GOOD, WECHAT_ENCODING_AES_KEY="Q" * 43,
                      REDIS_URL="redis://:hunter2pass@redis:6379/0", SESSION_SECRET="sess-secret-1")
    shown = repr(s) + str(s.summary())
    for secret in ("s3cr3t-value-abcdef", "Tok3n", "Q" * 43, "hunter2pass", "sess-secret-1"):
        assert secret not in shown
    assert s.summary()["redis"] == "redis://***@redis:6379/0"


def test_environment_and_dotenv(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("WECHAT_APP_ID=wxfromdotenv\nWECHAT_APP_SECRET=a\n"
                                   "WECHAT_TOKEN=abc\n")
    monkeypatch.setenv("WECHAT_TOKEN", "fromEnv")
    s = load_settings()
    assert s.app_id == "wxfromdotenv" and s.token.get_secret_value() == "fromEnv"


def test_sandbox_defaults_only_without_credentials():
    s = load_settings(_env_file=None, WXHOOK_SANDBOX=True)
    assert s.app_id.startswith("wx") and s.aes_keys
    real = load_settings(_env_file=None, WXHOOK_SANDBOX=True, **GOOD)
    assert real.app_id == GOOD["WECHAT_APP_ID"]


def test_mask_url():
    assert mask_url("rediss://user:pw@h:6380/1") == "rediss://***@h:6380/1"
    assert mask_url("redis://h:6379") == "redis://h:6379"
    assert mask_url("redis+cluster://:p@ss@h1:7000,h2:7001?password=s3cret") == \
        "redis+cluster://***@h1:7000,h2:7001?***"
    assert mask_url("redis+sentinel://:pw@s1,s2:26380/wx/0") == "redis+sentinel://***@s1,s2:26380/wx/0"
    for leaky in ("redis://:p@ss@h/0", "redis://h:6379/0?password=s3cret",
                  "unix:///run/redis.sock?password=s3cret", "redis://:pw@[::1:6379/0"):
        shown = mask_url(leaky)
        assert "ss@h" not in shown and "s3cret" not in shown and "pw" not in shown, shown


def test_empty_values_are_unset_as_in_a_copied_env_example(tmp_path, monkeypatch):
    (tmp_path / ".env").write_text(
        "WECHAT_APP_ID=wxfromdotenv\nWECHAT_APP_SECRET=a\nWECHAT_TOKEN=abc\n"
        "WECHAT_ENCODING_AES_KEY=\nREDIS_URL=\nWECHAT_API_BASE=\nSESSION_SECRET=\n"
        "WXHOOK_DEADLINE=\nWXHOOK_HANDLERS=\nWXHOOK_GREETING=  \n")
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.redis_url is None and s.encoding_aes_key is None
    assert s.api_base == "https://api.weixin.qq.com" and s.deadline == 4.0
    assert s.greeting == "Welcome, {nickname}!" and s.session_secret.get_secret_value()


@pytest.mark.parametrize("url", ["http://qqhost", "qqhost:6379", "redis//qqhost",
                                 "https://:pw9@qqhost/0"])
def test_a_malformed_redis_url_is_one_line_naming_the_variable(url):
    with pytest.raises(SettingsError) as exc:
        load_settings(_env_file=None, **GOOD, REDIS_URL=url)
    text = str(exc.value)
    assert text.startswith("invalid settings: REDIS_URL: must be a Redis URL") and "\n" not in text
    assert "pw9" not in text and "qqhost" not in text


@pytest.mark.parametrize(("url", "why"), [
    ("redis://:pw9@qqhost:abc/0", "the port must be a number"),
    ("redis://:pw9@qqhost:99999/0", "the port must be a number"),
    ("redis://:pw9@[qqhost/0", "neither a name nor a [bracketed] IPv6"),
    ("redis://:pw9@qqhost/0?socket_timeout=zz", "Invalid value for 'socket_timeout'"),
    ("unix:///run/qqhost.sock?password=pw9&db=x", "Invalid value for 'db'"),
    ("redis+sentinel://:pw9@qqhost:x/mymaster", "each sentinel needs host:port"),
    ("redis+sentinel://:pw9@qqhost:26379,/mymaster/zz", "the db after the service name"),
    ("redis+sentinel://:pw9@qqhost:26379", "needs host:port[,host:port]/service_name"),
    ("redis+cluster://:pw9@qqhost:x,qqhost:7001", "each cluster node needs host:port"),
    ("redis+cluster://:pw9@", "needs host:port[,host:port...]"),
    ("redis+cluster://:pw9@qqhost:7000/3", "a cluster has only db 0"),
    ("redis+cluster://:pw9@qqhost:7000?db=2", "a cluster has only db 0"),
    ("rediss+cluster://:pw9@qqhost:7000?socket_timeout=zz", "Invalid value for 'socket_timeout'"),
    ("redis+cluster://:pw9@qqhost:7000?path=/qq.sock", "a cluster client takes no option 'path'"),
    ("redis+cluster://:pw9@qqhost:7000?qqopt=1", "a cluster client takes no option 'qqopt'"),
    # A "/" or "#" in the password, not encoded: else read as another host (or localhost)
    # and a path that logs and /readyz show, password and all.
    ("redis://:12/pw9@qqhost:6379/0", "a password with '/' or '#' must be percent-encoded"),
    ("rediss://default:/pw9@qqhost:6380", "a password with '/' or '#' must be percent-encoded"),
    ("unix://:12/pw9@/run/qqhost.sock", "a password with '/' or '#' must be percent-encoded"),
    ("redis://:12#pw9@qqhost:6379/0", "a password with '/' or '#' must be percent-encoded"),
])
def test_a_redis_url_the_client_cannot_read_is_one_line(url, why):
    with pytest.raises(SettingsError) as exc:
        load_settings(_env_file=None, **GOOD, REDIS_URL=url)
    text = str(exc.value)
    assert text.startswith("invalid settings: REDIS_URL: not a usable ") and "\n" not in text
    assert why in text
    assert "pw9" not in text and "qqhost" not in text


@pytest.mark.parametrize("url", ["redis://h:6379/0", "rediss://:p@h:6380/1",
                                 "unix:///run/redis.sock?db=0",
                                 "redis+sentinel://:p@s1:26379,s2:26379/mymaster/0",
                                 "redis+cluster://:p@h1:7000,h2:7001,[::1]:7002",
                                 "rediss+cluster://u:p@h1:7000/0?ssl_cert_reqs=none"])
def test_every_documented_redis_url_form_is_accepted(url):
    s = load_settings(_env_file=None, **GOOD, REDIS_URL=url)
    assert s.redis_url is not None and s.redis_url.get_secret_value() == url


def test_a_redis_url_names_what_the_store_connects_to():
    # One parse for validation and connection: what passes here is what the client gets.
    sentinel = topology.parse("rediss+sentinel://:p%40ss@s1,[::1]:26380/mymaster/2?ssl_ca_certs=/c")
    assert (sentinel.kind, sentinel.service) == ("sentinel", "mymaster")
    assert sentinel.hosts == [("s1", 26379), ("::1", 26380)]  # a sentinel's default port
    assert sentinel.options == {"password": "p@ss", "db": 2, "ssl": True, "ssl_ca_certs": "/c"}
    cluster = topology.parse("redis+cluster://user:pw@h1,h2:7001")
    assert cluster.kind == "cluster" and cluster.hosts == [("h1", 6379), ("h2", 7001)]
    assert cluster.options == {"username": "user", "password": "pw"}
    assert topology.parse("redis://h/3").kind == "single"


def test_an_app_id_that_would_change_key_slots_is_refused():
    with pytest.raises(SettingsError) as exc:
        load_settings(_env_file=None, **{**GOOD, "WECHAT_APP_ID": "wx{campaign}1"})
    assert str(exc.value) == ("invalid settings: WECHAT_APP_ID: may contain only "
                              "A-Z a-z 0-9 _ -, found '{' '}'")


def test_a_token_message_names_the_real_fault_and_never_the_value():
    with pytest.raises(SettingsError) as exc:
        load_settings(_env_file=None, **{**GOOD, "WECHAT_TOKEN": "my-token-1"})
    assert str(exc.value) == ("invalid settings: WECHAT_TOKEN: may contain only A-Z a-z 0-9, "
                              "found '-'")
    with pytest.raises(SettingsError, match=r"must be 3-32 characters of A-Z a-z 0-9 \(got 40"):
        load_settings(_env_file=None, **{**GOOD, "WECHAT_TOKEN": "x" * 40})
    with pytest.raises(SettingsError, match="key #1 may contain only A-Z a-z 0-9, found '/'"):
        load_settings(_env_file=None, **GOOD, WECHAT_ENCODING_AES_KEY="a/" + "b" * 41)


def test_one_missing_credential_reads_as_one():
    with pytest.raises(SettingsError) as exc:
        load_settings(_env_file=None, **{**GOOD, "WECHAT_TOKEN": ""})
    assert "missing WECHAT_TOKEN (set it in the environment or .env" in str(exc.value)
    with pytest.raises(SettingsError, match=r"missing WECHAT_APP_SECRET, WECHAT_TOKEN .set them"):
        load_settings(_env_file=None, WECHAT_APP_ID="wx1")


@pytest.mark.parametrize(("value", "ok"), [("127.0.0.1", True), ("10.0.0.0/8, ::1", True),
                                           ("*", True), ("nginx.local", False)])
def test_forwarded_allow_ips(value, ok):
    if ok:
        assert load_settings(_env_file=None, **GOOD, WXHOOK_FORWARDED_ALLOW_IPS=value)
    else:
        with pytest.raises(SettingsError, match=r"WXHOOK_FORWARDED_ALLOW_IPS: 'nginx\.local'"):
            load_settings(_env_file=None, **GOOD, WXHOOK_FORWARDED_ALLOW_IPS=value)


def _run(args, env, cwd):
    import os
    import subprocess

    base = {k: v for k, v in os.environ.items() if not k.startswith(("WECHAT_", "WXHOOK_"))
            and k != "REDIS_URL"}
    return subprocess.run(args, env={**base, **env}, cwd=cwd, capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize(("env", "code"), [
    ({}, 3),                                                       # nothing: make run -> dev
    ({"WECHAT_APP_ID": "", "REDIS_URL": ""}, 3),                   # empty is unset
    (GOOD, 0),                                                     # make run -> serve
    ({"WECHAT_APP_ID": "wx1"}, 0),                                 # serve says what is missing
])
def test_make_runs_decision(env, code, tmp_path):
    import sys

    res = _run([sys.executable, "-m", "wxhook.server.config"], env, tmp_path)
    assert res.returncode == code, res.stderr
    assert res.stdout == res.stderr == ""


def test_make_runs_decision_with_a_malformed_value_says_what_serve_says(tmp_path):
    import sys

    from tests.support import WXHOOK

    env = {**GOOD, "WECHAT_TOKEN": "my-token-1"}
    decided = _run([sys.executable, "-m", "wxhook.server.config"], env, tmp_path)
    served = _run([WXHOOK, "serve"], env, tmp_path)
    assert decided.returncode == served.returncode == 2
    assert decided.stderr == served.stderr == (
        "wxhook: invalid settings: WECHAT_TOKEN: may contain only A-Z a-z 0-9, found '-'\n")


def test_serve_workers_with_an_empty_redis_url_is_refused_plainly(tmp_path):
    from tests.support import WXHOOK

    res = _run([WXHOOK, "serve", "--workers", "2"], {**GOOD, "REDIS_URL": ""}, tmp_path)
    assert res.returncode == 2 and "--workers N > 1 needs REDIS_URL" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.parametrize(("mode", "key", "expect"), [
    (None, False, "plain"), (None, True, "compat"), ("", True, "compat"),
    ("plain", True, "plain"), ("SAFE", True, "safe"), ("compat", True, "compat"),
])
def test_the_message_mode_is_inferred_unless_set(mode, key, expect):
    extra = {"WECHAT_ENCODING_AES_KEY": "A" * 43} if key else {}
    if mode is not None:
        extra["WXHOOK_MESSAGE_MODE"] = mode
    s = load_settings(_env_file=None, **GOOD, **extra)
    assert s.mode == expect and s.summary()["message_mode"] == expect


@pytest.mark.parametrize(("url", "why"), [
    ("http://127.0.0.1:99999", "a port from 1 to 65535"),
    ("http://qqhost:abc", "a port from 1 to 65535"),
    ("http://[::1", "a port from 1 to 65535"),
    ("https://qq host.example", "spaces or control characters"),
    ("https://qqhost.example/#/", "query or fragment"),          # redirect_uri in the fragment
    ("https://qqhost.example/?via=qq", "query or fragment"),
    ("https://user:pw9@qqhost.example", "user or password"),   # logs, and browsers (OAuth)
])
@pytest.mark.parametrize("name", ["WECHAT_API_BASE", "WECHAT_OAUTH_BASE", "PUBLIC_BASE_URL",
                                  "WXHOOK_INTERNAL_URL"])
def test_a_base_url_that_would_break_every_request_is_refused_at_start(name, url, why):
    # Paths are appended to these: each value here used to pass and fail (or leak) later.
    with pytest.raises(SettingsError) as exc:
        load_settings(_env_file=None, **GOOD, **{name: url})
    text = str(exc.value)
    assert text.startswith(f"invalid settings: {name}: ") and why in text, text
    assert "pw9" not in text and "qq" not in text


def test_a_base_url_keeps_its_path_and_loses_surrounding_spaces():
    s = load_settings(_env_file=None, **GOOD, WECHAT_API_BASE=" https://api.weixin.qq.com \n",
                      PUBLIC_BASE_URL="https://[::1]:8443/wx/")
    assert s.api_base == "https://api.weixin.qq.com"
    assert s.public_base_url == "https://[::1]:8443/wx"


def test_a_dotenv_in_another_encoding_is_one_line_naming_the_file(tmp_path, monkeypatch):
    # Saved as GBK by an older editor: every command used to end in a traceback. Read as
    # UTF-8 whatever the locale, so this holds under systemd's C locale too.
    (tmp_path / ".env").write_bytes("WECHAT_APP_ID=wx1234567890abcdef\nWECHAT_APP_SECRET=s3cr3t\n"
                                    "WECHAT_TOKEN=Tok3n\nWXHOOK_GREETING=欢迎，{nickname}！\n"
                                    .encode("gbk"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SettingsError) as exc:
        load_settings()
    text = str(exc.value)
    assert text.startswith("invalid settings: .env is not UTF-8 text") and "UTF-8" in text
    assert "\n" not in text and "s3cr3t" not in text
