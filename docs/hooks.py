"""mkdocs hooks: the site shows files that live elsewhere in the repository, and keeps every
link honest.

- A page line `[bench/README.md](../bench/README.md) <!-- include -->` is replaced by that
  file: on GitHub the line is a link to the file, on the site the page is the file. So the
  README, bench/README.md and deploy/README.md stay where readers of the repository expect
  them, with one copy each.
- A link to a repository file outside docs/ (`../rules.example.yaml`) works on GitHub; on
  the site it points at the page that includes that file, or at `repo_url` when one is set,
  or becomes plain text. A link to a file that does not exist fails the build, as mkdocs'
  own --strict check does for links inside docs/.
- The build fails when docs/configuration.md is not what docs/reference.py generates.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

import reference  # docs/reference.py; mkdocs puts this file's directory on the path
from mkdocs.exceptions import PluginError

INCLUDE = re.compile(r"^\[[^\]\n]*\]\(([^)\s]+)\) <!-- include -->$", re.MULTILINE)
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
# A code span first, so a link written inside one is left alone.
LINK = re.compile(r"(`[^`]*`)|\[([^\]]*)\]\(([^)\s]+)\)")

_root = Path(".")  # the repository: mkdocs.yml's directory
_docs = "docs"  # docs_dir, from the repository's root
_included: dict[str, str] = {}  # repository path of an included file -> the page showing it


def includes(text: str, page_path: str) -> list[str]:
    """Repository paths of the files a page's markdown includes (`page_path`: from the root)."""
    base = posixpath.dirname(page_path)
    return [posixpath.normpath(posixpath.join(base, m)) for m in INCLUDE.findall(text)]


def on_config(config: Any) -> Any:
    """Note where the repository is (the site may be built from a copy of it)."""
    global _root, _docs  # noqa: PLW0603 - mkdocs hands hooks no state but the module
    _root = Path(config.config_file_path).resolve().parent
    _docs = Path(config.docs_dir).resolve().relative_to(_root).as_posix()
    return config


def on_pre_build(config: Any) -> None:
    """Refuse a configuration page that no longer matches the code."""
    if reference.stale():
        raise PluginError("docs/configuration.md is out of date with the settings class or the "
                          "rules schema: run `make docs-config` and commit the result")


def on_files(files: Any, config: Any) -> Any:
    """Note which page shows which repository file."""
    _included.clear()
    for page in files.documentation_pages():
        path = _page_path(page.abs_src_path)
        for included in includes(Path(page.abs_src_path).read_text(encoding="utf-8"), path):
            _included[included] = path
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Expand includes, then point every link at what the site has."""
    page_path = _page_path(page.file.abs_src_path)
    repo_url = config.get("repo_url")
    out, last = [], 0
    for m in INCLUDE.finditer(markdown):
        out.append(rebase(markdown[last:m.start()], posixpath.dirname(page_path), page_path,
                          repo_url))
        path = posixpath.normpath(posixpath.join(posixpath.dirname(page_path), m[1]))
        if not (_root / path).is_file():
            raise PluginError(f"{page_path}: includes {path}, which does not exist")
        out.append(rebase((_root / path).read_text(encoding="utf-8"), posixpath.dirname(path),
                          page_path, repo_url))
        last = m.end()
    out.append(rebase(markdown[last:], posixpath.dirname(page_path), page_path, repo_url))
    return "".join(out)


def _page_path(abs_src_path: str) -> str:
    return Path(abs_src_path).resolve().relative_to(_root).as_posix()


def rebase(text: str, base: str, page_path: str, repo_url: str | None) -> str:
    """`text`'s relative links, written from the repository directory `base`, as seen from
    `page_path`; code blocks and code spans are left as they are."""
    out, last = [], 0
    for block in FENCE.finditer(text):
        out += [_links(text[last:block.start()], base, page_path, repo_url), block[0]]
        last = block.end()
    out.append(_links(text[last:], base, page_path, repo_url))
    return "".join(out)


def _links(text: str, base: str, page_path: str, repo_url: str | None) -> str:
    here = posixpath.dirname(page_path)

    def one(m: re.Match[str]) -> str:
        label, target = m[2], m[3]
        if m[1] is not None or re.match(r"[a-z][a-z0-9+.-]*:|#", target):
            return m[0]
        path, _, fragment = target.partition("#")
        anchor = f"#{fragment}" if fragment else ""
        repo_path = posixpath.normpath(posixpath.join(base, path))
        if repo_path in _included:
            return f"[{label}]({posixpath.relpath(_included[repo_path], here)}{anchor})"
        if repo_path == _docs or repo_path.startswith(f"{_docs}/"):
            return f"[{label}]({posixpath.relpath(repo_path, here)}{anchor})"
        if repo_path.startswith("../") or not (_root / repo_path).exists():
            raise PluginError(f"{page_path}: a link to {repo_path}, which does not exist")
        if repo_url:
            kind = "tree" if (_root / repo_path).is_dir() else "blob"
            return f"[{label}]({repo_url.rstrip('/')}/{kind}/main/{repo_path}{anchor})"
        if re.fullmatch(r"`[^`]+`", label):
            return f"`{repo_path}`"
        return label if repo_path in label else f"{label} (`{repo_path}`)"

    return LINK.sub(one, text)
