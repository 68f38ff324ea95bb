"""Settings from the environment and `.env`, validated with messages that name the variable.

Every setting, its default and its validation are here, the list an operator reads next to
.env.example.
"""

from __future__ import annotations

import re
import sys
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from wxhook.errors import SettingsError
from wxhook.server.store import topology

# `wxhook dev`, `wxhook simulate` and `make run` share these when no WECHAT_* is set, so a
# fresh clone can walk the whole path without a real account. They open nothing real.
SANDBOX_APP_ID = "wx00000000sandbox"
SANDBOX_APP_SECRET = "sandbox-app-secret-not-real"
SANDBOX_TOKEN = "wxhookSandbox"
SANDBOX_AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"

_TOKEN_RE = re.compile(r"[A-Za-z0-9]{3,32}")
_AES_RE = re.compile(r"[A-Za-z0-9]{43}")


class Settings(BaseSettings):
    """Everything wxhook reads from its environment; secrets are SecretStr and never printed."""

    # env_ignore_empty: `NAME=` (as in a copied .env.example) means "not set", so the
    # default applies; the model validator below does the same for blank keyword overrides.
    # UTF-8 whatever the locale: a greeting in Chinese reads the same under systemd's C
    # locale as in a developer's shell.
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", populate_by_name=True,
        case_sensitive=False, env_ignore_empty=True,
    )

    app_id: str = Field("", alias="WECHAT_APP_ID", description=(
        "AppID of the official account (console: 开发 > 基本配置). Required, with "
        "WECHAT_APP_SECRET and WECHAT_TOKEN, except under `wxhook dev`."))
    app_secret: SecretStr = Field(SecretStr(""), alias="WECHAT_APP_SECRET", description=(
        "AppSecret of the account. Required. Masked in every log line."))
    token: SecretStr = Field(SecretStr(""), alias="WECHAT_TOKEN", description=(
        "The Token of 服务器配置: 3-32 characters of A-Z a-z 0-9. Required."))
    encoding_aes_key: SecretStr | None = Field(None, alias="WECHAT_ENCODING_AES_KEY", description=(
        "EncodingAESKey, 43 characters of A-Z a-z 0-9; set it for compatible or safe mode. "
        "During a key change list the new key first, then the old one (`new,old`): the "
        "first key encrypts, every key decrypts."))
    api_base: str = Field("https://api.weixin.qq.com", alias="WECHAT_API_BASE", description=(
        "The WeChat API. For local work point it at `wxhook sandbox` "
        "(http://127.0.0.1:8001); `wxhook check` then says it is talking to a stand-in."))
    oauth_base: str = Field("https://open.weixin.qq.com", alias="WECHAT_OAUTH_BASE",
                            description="The OAuth authorize page's origin (the sandbox "
                                        "serves one too).")
    redis_url: SecretStr | None = Field(None, alias="REDIS_URL", description=(
        "Shared state for several workers or machines: `redis://[:password@]host:6379/0`, "
        "`rediss://` for TLS, `unix:///path/redis.sock`, `redis+sentinel://host:26379/master`. "
        "Not set: everything stays in this one process."))
    public_base_url: str = Field("http://127.0.0.1:8000", alias="PUBLIC_BASE_URL", description=(
        "This server's public origin; `/oauth/callback` (with an accounts file "
        "`/oauth/NAME/callback`) is appended for the OAuth redirect_uri. Set it in "
        "production to the https origin, e.g. "
        "`https://wx.example.com` (cookies are Secure only with https; `wxhook serve` warns "
        "about plain http to anything but loopback)."))
    session_secret: SecretStr = Field(SecretStr(""), alias="SESSION_SECRET", description=(
        "Signs OAuth state and session cookies. Set a long random value in production "
        "(`python -c 'import secrets; print(secrets.token_urlsafe(48))'`); derived from the "
        "app secret when empty, so it changes whenever the app secret does. With an "
        "accounts file each account signs with a key derived from it and the account's "
        "name, appid and app secret."))

    # unset: plain without an EncodingAESKey, compat with one (a key set during a migration
    # keeps working).
    message_mode: Literal["plain", "compat", "safe"] | None = Field(
        None, alias="WXHOOK_MESSAGE_MODE", description=(
            "Which pushes the account sends: plain, compat (plaintext and encrypted) or safe "
            "(encrypted only; a plaintext push is refused). Unset: plain without an "
            "EncodingAESKey, compat with one. Set safe once the console is in 安全模式."))
    token_endpoint: Literal["stable", "classic"] = Field(
        "stable", alias="WXHOOK_TOKEN_ENDPOINT",
        description="stable (`cgi-bin/stable_token`, recommended) or classic (`cgi-bin/token`).")
    deadline: float = Field(4.0, gt=0.2, le=4.8, alias="WXHOOK_DEADLINE", description=(
        "Seconds a push may take before it is answered \"success\" and its reply delivered "
        "later by `message/custom/send`."))
    timestamp_window: int = Field(300, ge=10, alias="WXHOOK_TIMESTAMP_WINDOW", description=(
        "Accepted distance of a push's timestamp from now, in seconds."))
    max_body: int = Field(256 * 1024, ge=1024, alias="WXHOOK_MAX_BODY", description=(
        "Largest accepted push body in bytes; a larger one is 413 without being read to "
        "the end."))
    dedup_ttl: int = Field(60, ge=30, alias="WXHOOK_DEDUP_TTL", description=(
        "How long a push's reply is kept for WeChat's retries, in seconds. The same push "
        "arriving later than this is refused as a replay, never run again."))
    greeting: str = Field("Welcome, {nickname}!", alias="WXHOOK_GREETING", description=(
        "The built-in greeting; `{nickname}` is replaced with the follower's name."))
    greeting_anonymous: str = Field("Welcome!", alias="WXHOOK_GREETING_ANONYMOUS", description=(
        "The greeting when no name is known in time."))
    profile_ttl: int = Field(3600, ge=0, alias="WXHOOK_PROFILE_TTL", description=(
        "How long a `user/info` answer is cached, in seconds."))
    state_ttl: int = Field(86400, ge=1, alias="WXHOOK_STATE_TTL", description=(
        "How long a follower's `ctx.state()` is kept after its last change, in seconds."))
    profile_db: str = Field("var/profiles.sqlite3", alias="WXHOOK_PROFILE_DB", description=(
        "Where OAuth-captured profiles are kept when REDIS_URL is not set: a SQLite file, "
        "relative to the working directory (`wxhook dev` uses "
        "var/profiles-sandbox.sqlite3)."))
    batch_window: float = Field(0.002, ge=0, le=0.5, alias="WXHOOK_BATCH_WINDOW", description=(
        "How long concurrent lookups wait to be batched into one `user/info/batchget` call, "
        "in seconds."))
    http_timeout: float = Field(3.0, gt=0, alias="WXHOOK_HTTP_TIMEOUT", description=(
        "Timeout of one WeChat API call, in seconds (always cut to the push's remaining "
        "budget)."))
    log_level: str = Field("INFO", alias="WXHOOK_LOG_LEVEL", description=(
        "DEBUG, INFO, WARNING, ERROR or CRITICAL."))
    log_format: Literal["json", "console"] = Field("json", alias="WXHOOK_LOG_FORMAT", description=(
        "json (one object a line) or console."))
    sandbox: bool = Field(False, alias="WXHOOK_SANDBOX", description=(
        "Run on the sandbox's credentials when none of the three WECHAT_* is set; "
        "`wxhook dev` and `make run` set it themselves. Not for production."))
    handlers: str = Field("", alias="WXHOOK_HANDLERS", description=(
        "Your own handlers: routers consulted before the rules and the defaults, "
        "`package.module:router`, comma-separated. The directory wxhook runs in is on the "
        "import path, e.g. `my_account.handlers:router` for ./my_account/handlers.py."))
    rules: str = Field("", alias="WXHOOK_RULES", description=(
        "Replies without code: a rules file (YAML) of keywords, default reply, greetings per "
        "QR scene, menu clicks and the menu. Checked at start-up, reloaded on SIGHUP and "
        "when the file changes."))
    accounts: str = Field("", alias="WXHOOK_ACCOUNTS", description=(
        "Several accounts in one deployment: an accounts file (YAML), each account's "
        "pushes at `/wechat/NAME` (docs/accounts.md). Set, the WECHAT_* account is not "
        "used and `/wechat` serves the account the file's `root:` names (404 without one). "
        "Checked at start-up, reloaded on SIGHUP and when the file changes (a bad file "
        "keeps the last good one)."))
    forwarded_allow_ips: str = Field(
        "127.0.0.1", alias="WXHOOK_FORWARDED_ALLOW_IPS", description=(
        "The reverse proxies whose X-Forwarded-For/-Proto are believed (the OAuth pages use "
        "the client address; /wechat never does): IPs or CIDR networks, comma-separated, or * "
        "(only when nothing else can reach the port)."))
    oauth_limit_per_client: int = Field(
        20, ge=1, alias="WXHOOK_OAUTH_LIMIT_PER_CLIENT", description=(
            "OAuth callbacks a minute that may reach WeChat's code exchange (a call with the "
            "app secret) from one client address (an IPv6 client is its /64); more is "
            "answered 429. Each instance keeps its own count."))
    oauth_limit_total: int = Field(
        300, ge=1, alias="WXHOOK_OAUTH_LIMIT_TOTAL", description=(
            "OAuth callbacks a minute that may reach WeChat's code exchange, from all "
            "clients (and all accounts of an accounts file); more is answered 429. Each "
            "instance keeps its own count."))

    internal_key: SecretStr | None = Field(None, alias="WXHOOK_INTERNAL_KEY", description=(
        "Turns on the token authority: the owner's other systems (a CRM, a shop) get the "
        "account's access token from wxhook, `GET /internal/accounts/NAME/token` with "
        "`Authorization: Bearer KEY`, instead of fetching their own and killing wxhook's "
        "(docs/token-authority.md). At least 32 characters "
        "(`python -c 'import secrets; print(secrets.token_urlsafe(32))'`); masked in every "
        "log line. Not set: the `/internal` routes do not exist (404)."))
    internal_limit: int = Field(600, ge=1, alias="WXHOOK_INTERNAL_LIMIT", description=(
        "Token authority requests a minute from one client address (an IPv6 client is its "
        "/64), with or without a valid key; more is answered 429 with Retry-After. Each "
        "instance keeps its own count."))
    internal_url: str = Field("http://127.0.0.1:8000", alias="WXHOOK_INTERNAL_URL", description=(
        "Where `wxhook token show|invalidate` finds a running server's token authority "
        "(read by the command, not by the server)."))

    @model_validator(mode="before")
    @classmethod
    def _blank_is_unset(cls, data: Any) -> Any:
        # Optional settings given as "" or spaces take their default, wherever they come from.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not (isinstance(v, str) and not v.strip())}
        return data

    @field_validator("app_id")
    @classmethod
    def _app_id_shape(cls, v: str) -> str:
        # It names every store key (wxhook:<appid>:...): braces would change the Redis
        # Cluster slot of those keys. A WeChat appid is "wx" and 16 hex digits.
        bad = sorted({c for c in v if not (c.isascii() and (c.isalnum() or c in "_-"))})
        if bad:
            raise ValueError("may contain only A-Z a-z 0-9 _ -, found "
                             + " ".join(repr(c) for c in bad[:5]))
        return v

    @field_validator("token")
    @classmethod
    def _token_shape(cls, v: SecretStr) -> SecretStr:
        raw = v.get_secret_value()
        if raw and not _TOKEN_RE.fullmatch(raw):
            raise ValueError(_shape_fault(raw, "3-32", 3, 32))
        return v

    @field_validator("encoding_aes_key")
    @classmethod
    def _aes_shape(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None
        for i, key in enumerate(k.strip() for k in v.get_secret_value().split(",")):
            if not _AES_RE.fullmatch(key):
                raise ValueError(f"key #{i + 1} " + _shape_fault(key, "exactly 43", 43, 43))
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_shape(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return None
        url = v.get_secret_value().strip()
        scheme = url.partition("://")[0].lower() if "://" in url else ""
        if scheme not in topology.SCHEMES:
            raise ValueError(
                "must be a Redis URL: redis://[:password@]host:6379/0, rediss:// (TLS), "
                "unix:///path/redis.sock, redis+sentinel://host:26379/master or "
                "redis+cluster://host:6379,host:6379"
                + (f" (got scheme {scheme}://)" if scheme else ""))
        try:
            # The parse the store connects with: a URL that passes here is one it can use,
            # and a bad one is one line at start-up rather than a traceback from the store.
            topology.parse(url)
        except ValueError as exc:
            raise ValueError(f"not a usable {scheme}:// URL: {exc}") from None
        return SecretStr(url)

    @field_validator("internal_key")
    @classmethod
    def _internal_key_shape(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None:
            return None
        raw = v.get_secret_value()
        # It travels in an HTTP header: printable ASCII, no spaces.
        if not all(33 <= ord(c) <= 126 for c in raw):
            raise ValueError("may contain only printable ASCII characters without spaces")
        if len(raw) < 32:
            raise ValueError(f"must be at least 32 characters (got {len(raw)}): "
                             "python -c 'import secrets; print(secrets.token_urlsafe(32))'")
        return v

    @field_validator("message_mode", mode="before")
    @classmethod
    def _mode(cls, v: Any) -> Any:
        return v.strip().lower() or None if isinstance(v, str) else v

    @field_validator("api_base", "oauth_base", "public_base_url", "internal_url")
    @classmethod
    def _url_shape(cls, v: str) -> str:
        v = v.strip()
        if not re.match(r"https?://[^/\s]+", v):
            raise ValueError("must be an http(s) URL such as https://example.com")
        # Paths are appended to each of these (redirect_uri, /cgi-bin/...): what would break
        # every request, or send a credential where logs and browsers see it, is refused here.
        try:
            parts = urlsplit(v)
            if not parts.hostname or parts.port == 0:  # (.port raises for a bad one)
                raise ValueError
        except ValueError:
            raise ValueError("needs a host and a port from 1 to 65535, as in "
                             "https://example.com:8443") from None
        if any(c.isspace() or not c.isprintable() for c in v):
            raise ValueError("must not contain spaces or control characters")
        if "?" in v or "#" in v:
            raise ValueError("must not have a query or fragment: paths are appended to it")
        if "@" in parts.netloc:
            raise ValueError("must not carry a user or password: it would show in logs")
        return v.rstrip("/")

    @field_validator("log_level")
    @classmethod
    def _level(cls, v: str) -> str:
        if v.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return v.upper()

    @field_validator("handlers")
    @classmethod
    def _handlers(cls, v: str) -> str:
        for spec in filter(None, (p.strip() for p in v.split(","))):
            if not re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", spec):
                raise ValueError(f"{spec!r} is not of the form package.module:router")
        return v

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxies(cls, v: str) -> str:
        import ipaddress

        for item in filter(None, (p.strip() for p in v.split(","))):
            if item == "*":
                continue
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address, a CIDR network or *") from None
        return v

    @field_validator("greeting")
    @classmethod
    def _greeting(cls, v: str) -> str:
        if "{nickname}" not in v:
            raise ValueError("must contain {nickname}")
        return v

    @model_validator(mode="after")
    def _credentials(self) -> Settings:
        given = {
            "WECHAT_APP_ID": self.app_id,
            "WECHAT_APP_SECRET": self.app_secret.get_secret_value(),
            "WECHAT_TOKEN": self.token.get_secret_value(),
        }
        if not any(given.values()) and self.sandbox:
            self.app_id = SANDBOX_APP_ID
            self.app_secret = SecretStr(SANDBOX_APP_SECRET)
            self.token = SecretStr(SANDBOX_TOKEN)
            if self.encoding_aes_key is None:
                self.encoding_aes_key = SecretStr(SANDBOX_AES_KEY)
        if self.message_mode in ("compat", "safe") and self.encoding_aes_key is None:
            raise ValueError(f"WXHOOK_MESSAGE_MODE={self.message_mode} needs "
                             "WECHAT_ENCODING_AES_KEY (the console's EncodingAESKey)")
        missing = [name for name, value in given.items() if not value]
        if missing and not self.sandbox and not self.accounts:
            raise ValueError(
                "missing " + ", ".join(missing)
                + f" (set {'it' if len(missing) == 1 else 'them'} in the environment or .env;"
                " `wxhook dev` needs none)"
            )
        if not self.session_secret.get_secret_value():
            # Derived, so a single-process setup works; documented as "set it in production"
            # because a derived secret changes when the app secret does.
            import hashlib

            seed = f"wxhook-session:{self.app_id}:{self.app_secret.get_secret_value()}"
            self.session_secret = SecretStr(hashlib.sha256(seed.encode()).hexdigest())
        return self

    @property
    def aes_keys(self) -> list[str]:
        """The EncodingAESKeys, newest first; empty in plaintext-only mode."""
        if self.encoding_aes_key is None:
            return []
        return [k.strip() for k in self.encoding_aes_key.get_secret_value().split(",")]

    @property
    def mode(self) -> Literal["plain", "compat", "safe"]:
        """The pushes accepted: plain, compat (both) or safe (encrypted only)."""
        if self.message_mode is not None:
            return self.message_mode
        return "compat" if self.encoding_aes_key is not None else "plain"

    def summary(self) -> dict[str, Any]:
        """The settings as a start-up log can show them: secrets masked."""
        return {
            "app_id": self.app_id,
            "app_secret": mask(self.app_secret.get_secret_value()),
            "token": mask(self.token.get_secret_value()),
            "aes_keys": len(self.aes_keys),
            "message_mode": self.mode,
            "api_base": self.api_base,
            "redis": mask_url(self.redis_url.get_secret_value()) if self.redis_url else None,
            "public_base_url": self.public_base_url,
            "token_endpoint": self.token_endpoint,
            "deadline": self.deadline,
            "sandbox": self.sandbox,
            "internal_key": mask(self.internal_key.get_secret_value())
            if self.internal_key else None,
        }


def _shape_fault(value: str, length: str, low: int, high: int) -> str:
    """What is wrong with a secret's shape, without showing the secret."""
    bad = sorted({c for c in value if not c.isascii() or not c.isalnum()})
    if bad:
        # The offending characters only (never a letter or digit of the secret).
        shown = " ".join(repr(c) for c in bad[:5])
        return f"may contain only A-Z a-z 0-9, found {shown}"
    if not low <= len(value) <= high:
        return f"must be {length} characters of A-Z a-z 0-9 (got {len(value)} characters)"
    return f"must be {length} characters of A-Z a-z 0-9"


def mask(secret: str) -> str:
    """Show a secret's length and nothing of its content."""
    return f"***({len(secret)})" if secret else ""


def mask_url(url: str) -> str:
    """A URL as a log may show it: scheme, host, port and path; credentials and query hidden.

    Redis URLs carry passwords in the userinfo (which may itself contain "@") or in the
    query (?password=), so both are replaced rather than picked apart.
    """
    try:
        parts = urlsplit(url)
        # Sentinel and Cluster URLs name several host:port, after the userinfo.
        where = parts.netloc.rpartition("@")[2] if "+" in parts.scheme else \
            (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    except ValueError:
        return "***"
    auth = "***@" if "@" in parts.netloc else ""
    query = "?***" if parts.query else ""
    return f"{parts.scheme}://{auth}{where}{parts.path}{query}"


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning pydantic's errors into one readable SettingsError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(describe(exc)) from None
    except UnicodeDecodeError as exc:
        # A .env saved in another encoding (GBK by an older editor, for a greeting in
        # Chinese): one line naming the file, not a traceback from the .env reader.
        raise SettingsError(f"invalid settings: .env is not UTF-8 text (byte "
                            f"{exc.start + 1}): save it as UTF-8") from None


def describe(exc: ValidationError) -> str:
    """pydantic's errors as lines naming each variable; input values are never included."""
    lines = []
    for err in exc.errors(include_input=False, include_url=False, include_context=False):
        loc = err.get("loc") or ()
        name = str(loc[0]) if loc else ""
        field = Settings.model_fields.get(name)
        env = (field.alias if field and field.alias else name).upper()
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        lines.append(f"{env}: {msg}" if env else msg)
    if len(lines) == 1:
        return "invalid settings: " + lines[0]
    return "invalid settings:\n  " + "\n  ".join(lines)


def credentials_given() -> bool:
    """True when the environment or .env sets any of the account's three credentials.

    Raises SettingsError (never pydantic's error, whose text may quote a value) when a
    setting is malformed.
    """
    return load_settings(WXHOOK_SANDBOX=True).app_id != SANDBOX_APP_ID


def main() -> int:
    """`python -m wxhook.server.config` for `make run`: 0 credentials, 3 none, 2 malformed."""
    try:
        return 0 if credentials_given() else 3
    except SettingsError as exc:
        print(f"wxhook: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
