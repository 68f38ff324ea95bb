"""The account's default behaviour: the greeting, then a few keyword rules."""

from __future__ import annotations

import importlib
import traceback

from wxhook import greeting
from wxhook.errors import SettingsError
from wxhook.messages import InboundMessage, TextMessage
from wxhook.replies import TextReply
from wxhook.router import Context, Router
from wxhook.rules_router import RulesAnswerer

HELP = "Send any message and we will get back to you. Send 'help' to see this again."


def keyword(words: set[str]) -> Router:
    """A router answering HELP to the given keywords (case-insensitive, trimmed)."""
    r = Router()

    def is_keyword(msg: InboundMessage) -> bool:
        return isinstance(msg, TextMessage) and msg.content.strip().lower() in words

    @r.message("text", match=is_keyword)
    async def help_text(msg: InboundMessage, ctx: Context) -> TextReply:
        return TextReply(HELP)

    return r


def load_router(spec: str) -> Router:
    """Import "package.module:name" and return that Router; SettingsError says what failed.

    The module is looked up on the import path, which `wxhook` extends with the directory
    it runs in (cli.main), so an owner's package next to where `wxhook` starts is found.
    """
    module_name, _, attr = spec.partition(":")
    where = f"WXHOOK_HANDLERS={spec}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            top = module_name.partition(".")[0]
            raise SettingsError(
                f"{where}: no module {exc.name!r} on the import path; run wxhook from the "
                f"directory that holds {top}/, or add that directory to PYTHONPATH") from None
        raise SettingsError(f"{where}: importing {module_name} failed: {exc} (install it "
                            "where wxhook runs)") from None
    except Exception as exc:  # noqa: BLE001 - the owner's code: say where it broke, one line
        if isinstance(exc, SyntaxError):
            detail, at = exc.msg, f"{exc.filename}, line {exc.lineno}"
        else:
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            detail, at = str(exc), f"{frame.filename}, line {frame.lineno}"
        raise SettingsError(f"{where}: importing {module_name} raised "
                            f"{type(exc).__name__}: {detail} ({at})") from None
    found = getattr(module, attr, None)
    if found is None:
        raise SettingsError(f"{where}: {module_name} ({module.__file__}) has no {attr!r}; "
                            f"define `{attr} = Router()` there or name the one it has")
    if not isinstance(found, Router):
        raise SettingsError(f"{where}: {module_name}.{attr} is a {type(found).__name__}, "
                            "not a wxhook.router.Router")
    return found


def default_router(extra: str = "", *, rules: RulesAnswerer | None = None) -> Router:
    """The account's routers from WXHOOK_HANDLERS, its rules file, then the built-in
    greeting and keyword rules (a rules file's `subscribe` replaces the greeting)."""
    router = Router()
    for spec in filter(None, (p.strip() for p in extra.split(","))):
        router.include(load_router(spec))
    if rules is None:
        router.include(greeting.router)
    else:
        router.include(rules.router)
        router.register(greeting.greet, events=("subscribe", "SCAN"),
                        match=lambda msg: not rules.greets())
    router.include(keyword({"help", "帮助", "?"}))
    return router
