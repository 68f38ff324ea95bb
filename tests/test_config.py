"""Settings: validated at start-up with messages that name the variable; secrets masked."""

import pytest

from service.config import SettingsError, load_settings, mask_url

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
    for leaky in ("redis://:p@ss@h/0", "redis://h:6379/0?password=s3cret",
                  "unix:///run/redis.sock?password=s3cret", "redis://:pw@[::1:6379/0"):
        shown = mask_url(leaky)
        assert "ss@h" not in shown and "s3cret" not in shown and "pw" not in shown, shown


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
