"""Settings from the environment and `.env`, validated with messages that name the variable."""

from __future__ import annotations

import re
import sys
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# `wxhook dev`, `wxhook simulate` and `make run` share these when no WECHAT_* is set, so a
# fresh clone can walk the whole path without a real account. They open nothing real.
SANDBOX_APP_ID = "wx00000000sandbox"
SANDBOX_APP_SECRET = "sandbox-app-secret-not-real"
SANDBOX_TOKEN = "wxhookSandbox"
SANDBOX_AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"

_TOKEN_RE = re.compile(r"[A-Za-z0-9]{3,32}")
_AES_RE = re.compile(r"[A-Za-z0-9]{43}")


class SettingsError(Exception):
    """Settings are missing or malformed; the message names each variable and the fix."""


class Settings(BaseSettings):
    """Everything wxhook reads from its environment; secrets are SecretStr and never printed."""

    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", populate_by_name=True, case_sensitive=False
    )

    app_id: str = Field("", alias="WECHAT_APP_ID")
    app_secret: SecretStr = Field(SecretStr(""), alias="WECHAT_APP_SECRET")
    token: SecretStr = Field(SecretStr(""), alias="WECHAT_TOKEN")
    # Comma-separated: the first key encrypts, every key decrypts (console key rotation).
    encoding_aes_key: SecretStr | None = Field(None, alias="WECHAT_ENCODING_AES_KEY")
    api_base: str = Field("https://api.weixin.qq.com", alias="WECHAT_API_BASE")
    oauth_base: str = Field("https://open.weixin.qq.com", alias="WECHAT_OAUTH_BASE")
    redis_url: SecretStr | None = Field(None, alias="REDIS_URL")
    public_base_url: str = Field("http://127.0.0.1:8000", alias="PUBLIC_BASE_URL")
    session_secret: SecretStr = Field(SecretStr(""), alias="SESSION_SECRET")

    token_endpoint: Literal["stable", "classic"] = Field("stable", alias="WXHOOK_TOKEN_ENDPOINT")
    deadline: float = Field(4.0, gt=0.2, le=4.8, alias="WXHOOK_DEADLINE")
    timestamp_window: int = Field(300, ge=10, alias="WXHOOK_TIMESTAMP_WINDOW")
    max_body: int = Field(256 * 1024, ge=1024, alias="WXHOOK_MAX_BODY")
    dedup_ttl: int = Field(60, ge=30, alias="WXHOOK_DEDUP_TTL")
    greeting: str = Field("Welcome, {nickname}!", alias="WXHOOK_GREETING")
    greeting_anonymous: str = Field("Welcome!", alias="WXHOOK_GREETING_ANONYMOUS")
    profile_ttl: int = Field(3600, ge=0, alias="WXHOOK_PROFILE_TTL")
    profile_db: str = Field("var/profiles.sqlite3", alias="WXHOOK_PROFILE_DB")
    batch_window: float = Field(0.005, ge=0, le=0.5, alias="WXHOOK_BATCH_WINDOW")
    http_timeout: float = Field(3.0, gt=0, alias="WXHOOK_HTTP_TIMEOUT")
    log_level: str = Field("INFO", alias="WXHOOK_LOG_LEVEL")
    log_format: Literal["json", "console"] = Field("json", alias="WXHOOK_LOG_FORMAT")
    sandbox: bool = Field(False, alias="WXHOOK_SANDBOX")
    # Extra routers, "package.module:router" comma-separated, consulted before the defaults.
    handlers: str = Field("", alias="WXHOOK_HANDLERS")
    rules: str = Field("", alias="WXHOOK_RULES")  # the rules file (YAML): handlers/rules.py

    @field_validator("token")
    @classmethod
    def _token_shape(cls, v: SecretStr) -> SecretStr:
        raw = v.get_secret_value()
        if raw and not _TOKEN_RE.fullmatch(raw):
            raise ValueError(
                f"must be 3-32 characters of A-Z a-z 0-9 (got {len(raw)} characters)"
            )
        return v

    @field_validator("encoding_aes_key")
    @classmethod
    def _aes_shape(cls, v: SecretStr | None) -> SecretStr | None:
        if v is None or not v.get_secret_value().strip():
            return None
        for i, key in enumerate(k.strip() for k in v.get_secret_value().split(",")):
            if not _AES_RE.fullmatch(key):
                raise ValueError(
                    f"key #{i + 1} must be exactly 43 characters of A-Z a-z 0-9 "
                    f"(got {len(key)} characters)"
                )
        return v

    @field_validator("api_base", "oauth_base", "public_base_url")
    @classmethod
    def _url_shape(cls, v: str) -> str:
        if not re.match(r"https?://[^/\s]+", v):
            raise ValueError("must be an http(s) URL such as https://example.com")
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
        missing = [name for name, value in given.items() if not value]
        if missing and not self.sandbox:
            raise ValueError(
                "missing " + ", ".join(missing)
                + " (set them in the environment or .env; `wxhook dev` needs none)"
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

    def summary(self) -> dict[str, Any]:
        """The settings as a start-up log can show them: secrets masked."""
        return {
            "app_id": self.app_id,
            "app_secret": mask(self.app_secret.get_secret_value()),
            "token": mask(self.token.get_secret_value()),
            "aes_keys": len(self.aes_keys),
            "api_base": self.api_base,
            "redis": mask_url(self.redis_url.get_secret_value()) if self.redis_url else None,
            "public_base_url": self.public_base_url,
            "token_endpoint": self.token_endpoint,
            "deadline": self.deadline,
            "sandbox": self.sandbox,
        }


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
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "***"
    auth = "***@" if "@" in parts.netloc else ""
    query = "?***" if parts.query else ""
    return f"{parts.scheme}://{auth}{parts.hostname or ''}{port}{parts.path}{query}"


def load_settings(**overrides: Any) -> Settings:
    """Build Settings, turning pydantic's errors into one readable SettingsError."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_input=False, include_url=False):
            loc = err.get("loc") or ()
            name = str(loc[0]) if loc else ""
            field = Settings.model_fields.get(name)
            env = (field.alias if field and field.alias else name).upper()
            msg = str(err.get("msg", "")).removeprefix("Value error, ")
            lines.append(f"{env}: {msg}" if env else msg)
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None


def has_credentials() -> bool:
    """True when the environment or .env names a real account."""
    return bool(Settings(WXHOOK_SANDBOX=True).app_id != SANDBOX_APP_ID)


if __name__ == "__main__":  # `python -m service.config`: exit 0 when credentials are set
    sys.exit(0 if has_credentials() else 1)
