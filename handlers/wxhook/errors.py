"""One error tree for everything wxhook raises on purpose."""

from __future__ import annotations


class WeChatError(Exception):
    """Root of every error wxhook raises on purpose."""


class GuardError(WeChatError):
    """A push was refused before it reached a handler; `status` is the HTTP answer."""

    status = 400
    reason = "bad_request"

    def __init__(self, message: str, *, status: int | None = None,
                 reason: str | None = None) -> None:
        # Given here rather than set on a local before `raise`: a local holding the
        # exception forms a frame/traceback cycle that keeps the request body alive.
        super().__init__(message)
        if status is not None:
            self.status = status
        if reason is not None:
            self.reason = reason


class SignatureError(GuardError):
    """`signature` or `msg_signature` did not match."""

    status = 403
    reason = "signature"


class FreshnessError(GuardError):
    """The timestamp is outside the window, or the nonce was replayed with another body."""

    status = 403
    reason = "timestamp"


class BodyTooLarge(GuardError):
    """The body exceeded the configured limit."""

    status = 413
    reason = "too_large"


class DecryptError(GuardError):
    """The ciphertext could not be decrypted or belongs to another appid."""

    status = 400
    reason = "decrypt"


class XMLError(GuardError):
    """The body is not well-formed, safe XML."""

    status = 400
    reason = "xml"


class WeChatAPIError(WeChatError):
    """The WeChat API answered a non-zero errcode (or could not be reached: errcode None)."""

    def __init__(self, errcode: int | None, errmsg: str, *, api: str = "") -> None:
        super().__init__(f"{api or 'wechat api'}: errcode {errcode}: {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg
        self.api = api


class TokenInvalid(WeChatAPIError):
    """40001 / 40014 / 42001: the access token is dead."""


class ConfigurationError(WeChatAPIError):
    """40013 / 40125 / 40243 / 40164: credentials or whitelist are wrong; retrying won't help."""


class QuotaExceeded(WeChatAPIError):
    """45009 / 45011: the quota is spent; back off."""


class UpstreamUnavailable(WeChatAPIError):
    """Network failure, timeout, HTTP 5xx, an open circuit, or a non-JSON answer."""


TOKEN_ERRCODES = frozenset({40001, 40014, 42001})
CONFIG_ERRCODES = frozenset({40013, 40125, 40243, 40164})
QUOTA_ERRCODES = frozenset({45009, 45011})

# What an operator has to do about a configuration errcode, said plainly.
CONFIG_HINTS = {
    40013: "WECHAT_APP_ID is not a valid appid: copy it from the console (开发 > 基本配置)",
    40125: ("WECHAT_APP_SECRET is wrong: reset it in the console (开发 > 基本配置) "
            "and update it here"),
    40243: "the AppSecret is frozen: unfreeze it in the console",
    40164: "this server's outbound IP is not in the API IP whitelist: add it in the console "
    "(开发 > 基本配置 > IP白名单)",
}


def api_error(errcode: int, errmsg: str, *, api: str) -> WeChatAPIError:
    """Build the most specific WeChatAPIError for an errcode."""
    if errcode in TOKEN_ERRCODES:
        return TokenInvalid(errcode, errmsg, api=api)
    if errcode in CONFIG_ERRCODES:
        return ConfigurationError(errcode, errmsg, api=api)
    if errcode in QUOTA_ERRCODES:
        return QuotaExceeded(errcode, errmsg, api=api)
    return WeChatAPIError(errcode, errmsg, api=api)


class SettingsError(Exception):
    """Settings are missing or malformed; the message names each variable and the fix."""
