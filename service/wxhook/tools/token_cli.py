"""`wxhook token show|invalidate`: the token authority of a running server, from a shell.

The operator's view of what the owner's other systems do over HTTP: the same endpoints, the
same key (WXHOOK_INTERNAL_KEY), so a script can use `$(wxhook token show)` and a token
WeChat rejected can be reported by hand. Exit 0: done; 1: the server could not answer (down,
busy, no valid token); 2: the request was wrong (no key, wrong key, no such account).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

CALLER = "wxhook-cli"
TIMEOUT = 20.0  # the server waits up to 15 s for a refresh


def add_commands(sub: Any) -> None:
    """Register `token` on the CLI's subparsers."""
    t = sub.add_parser(
        "token", help="the account's access token from a running server (prints a secret)",
        description="Ask a running server's token authority (WXHOOK_INTERNAL_KEY) for the "
                    "access token every instance uses, or report one WeChat rejected. The "
                    "token is printed on standard output: it is a secret, keep it out of "
                    "shared terminals and logs. Exit 0: done; 1: the server could not "
                    "answer; 2: no key, wrong key or no such account.")
    ts = t.add_subparsers(dest="token_command", required=True, help="show | invalidate")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--account", default="default", metavar="NAME",
                        help="the account (its name in WXHOOK_ACCOUNTS)")
    common.add_argument("--url", default=argparse.SUPPRESS, help="the server's origin (default: "
                        "WXHOOK_INTERNAL_URL, itself http://127.0.0.1:8000 unless set)")
    s = ts.add_parser("show", parents=[common],
                      help="print the token to use now (a secret); fetched only if none "
                           "is valid",
                      description="Print the access token every instance uses now (a "
                                  "secret) on standard output, its seconds left on standard "
                                  "error.")
    s.set_defaults(func=cmd_token_show)
    i = ts.add_parser("invalidate", parents=[common],
                      help="report a token WeChat rejected; print the one to use now "
                           "(a secret)",
                      description="Report a token WeChat rejected (40001). It is expired "
                                  "only if it is still the current one; the token to use "
                                  "now (a secret) is printed.")
    i.add_argument("token", metavar="TOKEN",
                   help="the rejected token; - reads it from standard input (keeps it out "
                        "of the shell's history and the process list)")
    i.set_defaults(func=cmd_token_invalidate)


def cmd_token_show(args: argparse.Namespace) -> int:
    """GET /internal/accounts/NAME/token."""
    return _ask(args, "GET", "")


def cmd_token_invalidate(args: argparse.Namespace) -> int:
    """POST /internal/accounts/NAME/token/invalid."""
    token = sys.stdin.readline().strip() if args.token == "-" else args.token.strip()
    if not token:
        print("wxhook: no token given", file=sys.stderr)
        return 2
    return _ask(args, "POST", "/invalid", {"access_token": token})


def _ask(args: argparse.Namespace, method: str, suffix: str,
         body: dict[str, str] | None = None) -> int:
    from urllib.parse import quote

    import httpx

    from wxhook.server.serving import settings_or_exit

    settings = settings_or_exit(WXHOOK_SANDBOX=True)
    if settings.internal_key is None:
        print("wxhook: WXHOOK_INTERNAL_KEY is not set: give the key the server runs with "
              "(environment or .env)", file=sys.stderr)
        return 2
    base = (getattr(args, "url", "") or settings.internal_url).rstrip("/")
    url = f"{base}/internal/accounts/{quote(args.account, safe='')}/token{suffix}"
    headers = {"Authorization": f"Bearer {settings.internal_key.get_secret_value()}",
               "X-Wxhook-Caller": CALLER}
    try:
        resp = httpx.request(method, url, headers=headers, json=body, timeout=TIMEOUT)
    except httpx.HTTPError as exc:
        print(f"wxhook: cannot reach {base}: {type(exc).__name__}", file=sys.stderr)
        return 1
    return _answer(resp, base, args.account)


def _answer(resp: Any, base: str, account: str) -> int:
    """Print the token, or say in one line why there is none; the exit status."""
    try:
        data = resp.json()
    except ValueError:
        data = {}
    data = data if isinstance(data, dict) else {}
    if resp.status_code == 200 and isinstance(data.get("access_token"), str):
        print(data["access_token"])
        print(f"expires in {data.get('expires_in')} s", file=sys.stderr)
        return 0
    if resp.status_code == 401:
        print(f"wxhook: {base} refused the key: WXHOOK_INTERNAL_KEY differs from the "
              "server's", file=sys.stderr)
        return 2
    if resp.status_code == 404:
        why = (f"no account {account!r} there" if data.get("detail") == "no account of that "
               "name" else "no token authority there (is WXHOOK_INTERNAL_KEY set on the "
               "server?)")
        print(f"wxhook: {base}: {why}", file=sys.stderr)
        return 2
    if resp.status_code == 422:
        print(f"wxhook: {base} refused the token given: 1-2048 characters", file=sys.stderr)
        return 2
    detail = data.get("detail") or resp.reason_phrase
    extra = "".join(f", {k} {data[k]}" for k in ("errcode", "retry_in_s") if data.get(k))
    retry = resp.headers.get("retry-after")
    later = f" (ask again in {retry} s)" if retry and "retry_in_s" not in data else ""
    print(f"wxhook: {base} answered {resp.status_code}: {detail}{extra}{later}",
          file=sys.stderr)
    return 1
