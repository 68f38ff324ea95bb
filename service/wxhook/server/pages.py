"""The small HTML pages of the OAuth flow: /me and the friendly failure pages.

They open inside WeChat's in-app browser on a phone, so: a viewport meta, large type, one
column, no scripts. Everything that came from a follower or from WeChat is HTML-escaped.
"""

from __future__ import annotations

from html import escape
from urllib.parse import quote, urlencode

from starlette.responses import HTMLResponse

_STYLE = """
:root { color-scheme: light; }
body { margin: 0; font: 20px/1.5 -apple-system, "PingFang SC", "Noto Sans CJK SC",
       "Microsoft YaHei", "WenQuanYi Micro Hei", sans-serif; background: #ededed; color: #191919; }
main { max-width: 34rem; margin: 0 auto; padding: 2.5rem 1.25rem; text-align: center; }
h1 { font-size: 1.6rem; margin: 1rem 0 .5rem; word-wrap: break-word; }
p { margin: .75rem 0; color: #4c4c4c; }
.avatar { width: 132px; height: 132px; border-radius: 12px; background: #d5d5d5;
          object-fit: cover; display: block; margin: 0 auto; position: relative; }
/* Only an image that failed to load gets ::before: a plain tile, not a broken icon. */
.avatar::before { content: ""; position: absolute; inset: 0; border-radius: 12px;
                  background: #d5d5d5; }
.button { display: block; margin: 2rem auto 0; padding: .9rem 1rem; border-radius: 8px;
          background: #07c160; color: #fff; text-decoration: none; font-weight: 600; }
"""


def page(title: str, body_html: str, *, status: int = 200) -> HTMLResponse:
    """A complete page; `body_html` must already be escaped."""
    html = f"""<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1, viewport-fit=cover">
<meta name="referrer" content="no-referrer">
<title>{escape(title)}</title>
<style>{_STYLE}</style>
</head>
<body><main>
{body_html}
</main></body>
</html>
"""
    # no-store: these pages carry a follower's name and must not be cached by proxies.
    return HTMLResponse(html, status_code=status, headers={
        "cache-control": "no-store", "x-frame-options": "DENY",
        "content-security-policy": "default-src 'none'; img-src https: http:; "
                                   "style-src 'unsafe-inline'; frame-ancestors 'none'",
    })


def login_url(next_path: str, scope: str | None = None, *, login: str = "/oauth/login") -> str:
    """The relative link that starts (or restarts) a login at `login`."""
    params = {"next": next_path} | ({"scope": scope} if scope else {})
    return login + "?" + urlencode(params, quote_via=quote)


def me_page(profile: dict[str, str] | None, *, logged_in: bool, login: str = "/oauth/login",
            me: str = "/me") -> HTMLResponse:
    """Hello, <nickname> with the avatar; a login link for a stranger (`login`, then `me`)."""
    if not logged_in:
        return page("Sign in", f"""<h1>Hello!</h1>
<p>Sign in with WeChat so this page knows who you are.</p>
<a class="button" href="{escape(login_url(me, login=login))}">Sign in with WeChat</a>""")
    profile = profile or {}
    nickname = profile.get("nickname", "").strip()
    avatar = profile.get("headimgurl", "")
    img = ""
    if avatar.startswith(("https://", "http://")):
        img = f'<img class="avatar" src="{escape(avatar)}" alt="" width="132" height="132">'
    if nickname:
        return page(f"Hello, {nickname}", f"{img}\n<h1>Hello, {escape(nickname)}</h1>\n"
                    "<p>You are signed in with WeChat.</p>")
    # snsapi_base logins know the openid only: offer to share the name.
    share = login_url(me, "snsapi_userinfo", login=login)
    return page("Hello", f"""{img}<h1>Hello!</h1>
<p>You are signed in, but WeChat did not share your name with us.</p>
<a class="button" href="{escape(share)}">Share my name</a>""")


# Every way a sign-in can fail: (status, title, message). 200 where nobody did anything
# wrong and trying again is the answer; never a 5xx (WeChat's browser shows those raw).
PROBLEMS: dict[str, tuple[int, str, str]] = {
    "scope": (400, "Unknown scope", "The sign-in link asked for an unknown permission."),
    "invalid": (400, "Invalid sign-in link", "This sign-in link is not valid."),
    "long": (400, "Sign-in link too long", ("This sign-in link asks to return to an address "
             "longer than 512 bytes. Sign in from the page itself, or use a shorter link.")),
    "cancelled": (200, "Sign-in cancelled",
                  "You did not allow the sign-in. You can try again whenever you like."),
    "expired": (400, "Sign-in expired", "This sign-in took too long. Please try again."),
    "forged": (403, "Could not verify this sign-in",
               "This sign-in was not started in this browser, or it has expired."),
    "reused": (400, "Sign-in link already used",
               "This sign-in link was already used. Please start again."),
    "code": (400, "Sign-in link expired",
             "WeChat says this sign-in has expired or was already used. Please try again."),
    "permission": (403, "Permission needed", ("WeChat did not let this page read your "
                   "profile. Try again and allow access to your name and photo.")),
    "busy": (429, "Too many sign-ins", ("Too many sign-ins are being made from your "
             "network right now. Please wait a minute and try again.")),
    "upstream": (200, "WeChat is not answering",
                 "WeChat did not answer in time. Please try again in a moment."),
    "failed": (400, "Sign-in failed", "WeChat could not complete the sign-in. Please try again."),
    "error": (200, "Something went wrong",
              "We could not finish signing you in. Please try again."),
}


def problem_page(kind: str, *, retry_next: str = "/me", retry_scope: str | None = None,
                 login: str = "/oauth/login") -> HTMLResponse:
    """A friendly failure page (see PROBLEMS) with a link that starts the login again."""
    status, title, message = PROBLEMS[kind]
    return page(title, f"""<h1>{escape(title)}</h1>
<p>{escape(message)}</p>
<a class="button" href="{escape(login_url(retry_next, retry_scope, login=login))}">Try again</a>""",
                status=status)
