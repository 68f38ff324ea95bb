"""The accounts file (WXHOOK_ACCOUNTS): several official accounts served by one deployment.

Checked like the rules file: every problem is one line with the file and line it is on,
and a file with any problem is refused as a whole. Secret values (app_secret, token,
encoding_aes_key) never appear in a problem line, whether written literally or read from
the environment through `${VAR}`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from dotenv import dotenv_values
from pydantic import SecretStr

from wxhook.errors import SettingsError
from wxhook.rules_yaml import Seq, YamlMap, parse_yaml
from wxhook.server.config import _AES_RE, _TOKEN_RE, Settings, _shape_fault

NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
_APP_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
_HANDLERS_RE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_VAR_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# The file's keys and each account's fields, with what they mean: the checker and the
# generated configuration page (docs/reference.py) both read these.
FILE_KEYS = {
    "accounts": "the accounts, a list of at least one, each a mapping of the fields below",
    "root": ("optional: the name of one account that also answers at the URLs of a "
             "one-account deployment, `/wechat`, `/oauth/login` and `/me`, so the account "
             "that served there from `WECHAT_*` keeps its console URL and its pages' links. "
             "Left out, those URLs answer 404"),
}
ACCOUNT_FIELDS = {
    "name": ("required: 1-32 of a-z 0-9 _ -, unique in the file; the account's URLs are "
             "`/wechat/NAME`, `/oauth/NAME/login`, `/oauth/NAME/callback` and `/me/NAME`"),
    "app_id": "required: the AppID (开发者ID); unique in the file",
    "app_secret": "required: the AppSecret; masked everywhere",
    "token": "required: the Token of the console's server configuration (3-32 letters/digits)",
    "encoding_aes_key": ("optional: the EncodingAESKey (43 characters), or two separated by "
                         "a comma while the console changes it"),
    "message_mode": "optional: plain, compat or safe (as `WXHOOK_MESSAGE_MODE`)",
    "rules": ("optional: the account's rules file, relative to the accounts file's folder "
              "(else `WXHOOK_RULES`)"),
    "handlers": ("optional: the account's handlers, `package.module:router` (else "
                 "`WXHOOK_HANDLERS`)"),
}
_REQUIRED = tuple(k for k, v in ACCOUNT_FIELDS.items() if v.startswith("required"))
_OPTIONAL = tuple(k for k in ACCOUNT_FIELDS if k not in _REQUIRED)
_SECRETS = frozenset({"app_secret", "token", "encoding_aes_key"})
_MODES = ("plain", "compat", "safe")
NAMES_SHOWN = 5  # account names in the start-up line; the others are counted
# The settings each account has its own of: the start-up line names none of them.
_PER_ACCOUNT = ("app_id", "app_secret", "token", "aes_keys", "message_mode")


@dataclass(frozen=True, slots=True)
class Account:
    """One account of the file, checked; `rules` is a path (relative to the file's folder
    resolved), "" for none."""

    name: str
    app_id: str
    app_secret: SecretStr
    token: SecretStr
    encoding_aes_key: SecretStr | None = None
    message_mode: str | None = None
    rules: str = ""
    handlers: str = ""
    root: bool = False  # also answers at /wechat, /oauth/login and /me (the file's `root:`)


def root_of(accounts: Mapping[str, Account]) -> str | None:
    """The name of the account that also answers at the one-account URLs, if any."""
    return next((name for name, account in accounts.items() if account.root), None)


class AccountsError(SettingsError):
    """An accounts file that cannot be used; `problems` holds one line per fault."""

    def __init__(self, path: str, problems: list[str]) -> None:
        super().__init__(f"WXHOOK_ACCOUNTS={path} is not valid:\n  " + "\n  ".join(problems))
        self.problems = problems


def load_accounts(path: str, environ: Mapping[str, str] | None = None) -> dict[str, Account]:
    """The accounts in `path` by name, in file order; AccountsError lists every problem.

    `${VAR}` reads `environ`, by default this process's environment and then `.env` in the
    working directory (where the settings come from too), both as they are now.
    """
    return parse_accounts(read_accounts(path), path, environ)


def read_accounts(path: str) -> bytes:
    """The file's bytes (AccountsError when it cannot be read)."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise AccountsError(path, [f"{path}: cannot read: {exc.strerror or exc}"]) from None


def environment() -> dict[str, str]:
    """What `${VAR}` reads: the process's environment, then `.env` for names it lacks."""
    try:
        dotenv = dotenv_values(".env", encoding="utf-8")  # as the settings read it
    except UnicodeDecodeError as exc:
        raise SettingsError(f".env is not UTF-8 text (byte {exc.start + 1}): save it as "
                            "UTF-8") from None
    return {**{k: v for k, v in dotenv.items() if v is not None}, **os.environ}


def parse_accounts(data: bytes, path: str,
                   environ: Mapping[str, str] | None = None) -> dict[str, Account]:
    """The accounts in `data`, read from (or copied from) `path`: problems name `path`, and
    `rules` paths are relative to its folder."""
    env = environment() if environ is None else environ
    try:
        doc = parse_yaml(data)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        why = getattr(exc, "problem", None) or "cannot be read"
        raise AccountsError(path, [f"{path}:{line}: not valid YAML: {why}"]) from None
    except UnicodeDecodeError:
        raise AccountsError(path, [f"{path}:1: not UTF-8 text"]) from None
    problems: list[str] = []
    accounts: dict[str, Account] = {}
    items = _items(doc, path, problems)
    base = Path(path).parent
    app_ids: dict[str, str] = {}
    for i, (line, entry) in enumerate(items):
        where = f"{path}:{line}: accounts[{i}]"
        account = _account(entry, where, base, env, problems)
        if account is None:
            continue
        if account.name in accounts:
            problems.append(f"{where}.name: {account.name!r} is used twice (names are URLs)")
        elif account.app_id in app_ids:
            # Tokens, dedup claims and state are keyed by appid: two names would share them.
            problems.append(f"{where}.app_id: the same app_id as account "
                            f"{app_ids[account.app_id]!r}")
        else:
            accounts[account.name] = account
            app_ids[account.app_id] = account.name
    root = _root(doc, path, accounts, problems)
    if problems:
        raise AccountsError(path, problems)
    if root is not None:
        accounts[root] = replace(accounts[root], root=True)
    return accounts


def summary(settings: Settings, accounts: Mapping[str, Account]) -> dict[str, Any]:
    """The start-up line's settings with an accounts file: how many accounts and the first
    names, instead of the WECHAT_* credentials (which no account uses)."""
    names = list(accounts)
    shown = ", ".join(names[:NAMES_SHOWN])
    if len(names) > NAMES_SHOWN:
        shown += f", ... ({len(names) - NAMES_SHOWN} more)"
    root = root_of(accounts)
    return {"accounts": len(names), "account_names": shown,
            **({"root_account": root} if root else {}),
            **{k: v for k, v in settings.summary().items() if k not in _PER_ACCOUNT}}


def _items(doc: Any, path: str, problems: list[str]) -> list[tuple[int, Any]]:
    """The entries of `accounts:` with their lines; a problem when the shape is wrong."""
    if not isinstance(doc, YamlMap) or "accounts" not in doc:
        problems.append(f"{path}:1: must be a mapping with an `accounts:` list")
        return []
    for key in doc:
        if key not in FILE_KEYS:
            problems.append(f"{path}:{doc.lines[key]}: {key}: unknown key (known: "
                            f"{', '.join(FILE_KEYS)})")
    seq = doc["accounts"]
    if not isinstance(seq, Seq) or not seq:
        problems.append(f"{path}:{doc.lines['accounts']}: accounts: must be a list of at "
                        "least one account")
        return []
    return list(zip(seq.lines, seq, strict=True))


def _root(doc: Any, path: str, accounts: Mapping[str, Account],
          problems: list[str]) -> str | None:
    """The name `root:` gives, checked against the accounts read (None: no `root:`)."""
    if not isinstance(doc, YamlMap) or "root" not in doc:
        return None
    name, where = doc["root"], f"{path}:{doc.lines['root']}: root"
    if not isinstance(name, str):
        problems.append(f"{where}: must be the name of an account of the file")
    elif name not in accounts:
        # The name is the file's own text, not a secret: shown, bounded.
        problems.append(f"{where}: {name[:40]!r} is not the name of an account of the file")
    else:
        return name
    return None


def _account(entry: Any, where: str, base: Path, env: Mapping[str, str],
             problems: list[str]) -> Account | None:
    if not isinstance(entry, YamlMap):
        problems.append(f"{where}: must be a mapping (name, app_id, app_secret, token, ...)")
        return None
    start = len(problems)
    for key in entry.dup_keys:
        problems.append(f"{_at(where, entry, key)}: written twice")
    values: dict[str, str] = {}
    for key, raw in entry.items():
        place = _at(where, entry, key)
        if key not in _REQUIRED and key not in _OPTIONAL:
            problems.append(f"{place}: unknown key (known: {', '.join(_REQUIRED + _OPTIONAL)})")
        elif isinstance(raw, bool) or not isinstance(raw, str | int):
            problems.append(f"{place}: must be a text")
        else:
            value = _expand(str(raw), place, env, problems)
            if value is not None:
                values[key] = value.strip()
    for key in _REQUIRED:
        if key not in entry:
            problems.append(f"{where}: {key}: missing")
        elif key in values and not values[key]:
            problems.append(f"{_at(where, entry, key)}: must not be empty")
    _check(values, where, entry, problems)
    if len(problems) > start:
        return None
    aes = values.get("encoding_aes_key") or None
    rules = values.get("rules", "")
    return Account(
        name=values["name"], app_id=values["app_id"],
        app_secret=SecretStr(values["app_secret"]), token=SecretStr(values["token"]),
        encoding_aes_key=SecretStr(aes) if aes else None,
        message_mode=values.get("message_mode", "").lower() or None,
        rules=str(base / rules) if rules else "", handlers=values.get("handlers", ""))


def _check(values: dict[str, str], where: str, entry: YamlMap, problems: list[str]) -> None:
    """The shape of each value; secrets are described, never shown."""
    name = values.get("name")
    if name and not NAME_RE.fullmatch(name):
        problems.append(f"{_at(where, entry, 'name')}: must be 1-32 of a-z 0-9 _ - starting "
                        "with a letter or digit (it is the URL /wechat/NAME)")
    app_id = values.get("app_id")
    if app_id and not _APP_ID_RE.fullmatch(app_id):
        problems.append(f"{_at(where, entry, 'app_id')}: must be the AppID (A-Z a-z 0-9)")
    token = values.get("token")
    if token and not _TOKEN_RE.fullmatch(token):
        problems.append(f"{_at(where, entry, 'token')}: {_shape_fault(token, '3-32', 3, 32)}")
    keys = [k.strip() for k in values.get("encoding_aes_key", "").split(",") if k.strip()]
    for i, key in enumerate(keys):
        if not _AES_RE.fullmatch(key):
            problems.append(f"{_at(where, entry, 'encoding_aes_key')}: key #{i + 1} "
                            + _shape_fault(key, "exactly 43", 43, 43))
    mode = values.get("message_mode", "").lower()
    if mode and mode not in _MODES:
        problems.append(f"{_at(where, entry, 'message_mode')}: must be plain, compat or safe")
    elif mode in ("compat", "safe") and not keys:
        problems.append(f"{_at(where, entry, 'message_mode')}: {mode} needs encoding_aes_key")
    for spec in filter(None, (p.strip() for p in values.get("handlers", "").split(","))):
        if not _HANDLERS_RE.fullmatch(spec):
            problems.append(f"{_at(where, entry, 'handlers')}: {spec!r} is not of the form "
                            "package.module:router")


def _expand(raw: str, place: str, env: Mapping[str, str], problems: list[str]) -> str | None:
    """`${VAR}` replaced from the environment; None (and a problem) when one is unset."""
    missing = [m for m in _VAR_RE.findall(raw) if not env.get(m)]
    if missing:
        problems.append(f"{place}: " + ", ".join(f"${{{m}}}" for m in missing)
                        + " is not set in the environment")
        return None
    return _VAR_RE.sub(lambda m: env[m.group(1)], raw)


def _at(where: str, entry: YamlMap, key: str) -> str:
    """`file:line: accounts[i].key`, on the key's own line."""
    prefix, _, index = where.rpartition(": ")
    file = prefix.rpartition(":")[0]
    return f"{file}:{entry.lines.get(key, entry.line)}: {index}.{key}"
