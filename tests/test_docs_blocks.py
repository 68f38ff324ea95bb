"""Every fenced code block on the documentation site works as written.

The pages are docs/*.md and the repository files they include (the README, the benchmark's
and the deploy files'); docs/handlers.md has its own test (test_docs_examples.py). What each
fence is checked for:

- python: compiles, and the blocks together pass `mypy --strict` as whole modules;
- sh: every `wxhook ...` parses with the real command line, every `make X` names a target,
  every `python script.py --opt` names a script that has that option, every VAR= is a
  setting, every repository path exists, and any other program is installed or one of the
  few tools a reader brings (docker, kubectl, ...);
- yaml: loads; a rules file passes the rules checker;
- dockerfile: known instructions; `FROM wxhook:TAG` is the project's version;
- text: an illustration (program output, a log line), not checked;
- any fence with `title="FILE"` naming a repository file: the file's exact text.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mypy import api as mypy_api

# The code's modules: the only lines to change when it moves (wxhook.server.x, wxhook.x).
from handlers.rules import parse_rules
from handlers.rules_schema import SECTIONS
from service.config import Settings
from service.tools.cli import build_parser
from tests.support import ROOT

INCLUDE = re.compile(r"^\[[^\]\n]*\]\(([^)\s]+)\) <!-- include -->$", re.MULTILINE)
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
LANGUAGES = {"python", "sh", "yaml", "dockerfile", "text"}
# Programs a reader runs on their own machines, not installed here.
EXTERNAL = {"docker", "kubectl", "certbot", "systemctl", "journalctl", "nginx", "promtool",
            "systemd-analyze", "wrk", "useradd", "python3.11", "pip", "redis-cli", "apt-get"}
ENV_NAMES = {"PYTHONPATH", "HYPOTHESIS_PROFILE", "BENCH_REDIS_URL", "PROMETHEUS_MULTIPROC_DIR"}
DOCKERFILE = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
              "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its info string and its text."""

    where: str
    info: str
    code: str

    @property
    def language(self) -> str:
        return self.info.split(maxsplit=1)[0] if self.info.strip() else ""

    @property
    def title(self) -> str | None:
        m = re.search(r'title="([^"]+)"', self.info)
        return m[1] if m else None


def pages() -> list[Path]:
    """docs/*.md but the handler guide, and every file they include."""
    out = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        if page.name == "handlers.md":
            continue
        text = page.read_text(encoding="utf-8")
        out += [(page.parent / target).resolve() for target in INCLUDE.findall(text)] or [page]
    return out


def blocks() -> list[Block]:
    """Every fenced block of every page."""
    found = []
    for page in pages():
        text = page.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            found.append(Block(f"{page.relative_to(ROOT)}:{line}", m[1].strip(), m[2]))
    return found


BLOCKS = blocks()


def of(language: str) -> list[Block]:
    return [b for b in BLOCKS if b.language == language]


def test_the_pages_have_blocks_of_every_kind_checked_here():
    assert {b.language for b in BLOCKS} == LANGUAGES
    assert any(p.name == "README.md" and p.parent == ROOT for p in pages())


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.where)
def test_every_fence_names_a_language_this_test_checks(block: Block):
    assert block.language in LANGUAGES, (
        f"{block.where}: fence {block.info!r}: use one of {sorted(LANGUAGES)} "
        "(`text` for an illustration)")


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.title], ids=lambda b: b.where)
def test_a_block_titled_with_a_file_is_that_file(block: Block):
    assert block.title is not None
    path = ROOT / block.title
    assert path.is_file(), f"{block.where}: title {block.title} is no repository file"
    assert block.code == path.read_text(encoding="utf-8"), f"{block.where}: differs from the file"


# --------------------------------------------------------------------------- python


@pytest.mark.parametrize("block", of("python"), ids=lambda b: b.where)
def test_python_blocks_compile(block: Block):
    compile(block.code, block.where, "exec")


@pytest.mark.slow
def test_python_blocks_pass_mypy_strict(tmp_path, monkeypatch):
    files = []
    for i, block in enumerate(of("python")):
        files.append(tmp_path / f"docs_block_{i}.py")
        files[-1].write_text(f"# {block.where}\n{block.code}", encoding="utf-8")
    monkeypatch.chdir(ROOT)  # where an owner runs it: the project's packages importable
    out, err, status = mypy_api.run(["--strict", "--config-file", str(ROOT / "pyproject.toml"),
                                     *map(str, files)])
    assert status == 0, out + err


# --------------------------------------------------------------------------- sh


def commands(code: str) -> list[list[str]]:
    """The commands of a shell block: continuations joined, comments dropped, split at
    `&&`, `||`, `;` and `|`."""
    out: list[list[str]] = []
    for line in code.replace("\\\n", " ").splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        current: list[str] = []
        for token in lexer:
            if token in {"&&", "||", ";", "|"}:
                out.append(current)
                current = []
            else:
                current.append(token)
        out.append(current)
    return [c for c in out if c]


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z0-9_-]+)\s*:(?!=)", text, flags=re.MULTILINE))


def top_level_dirs() -> set[str]:
    return {p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith(".")}


def command_fault(argv: list[str]) -> str | None:
    """What is wrong with one command, or None."""
    names = {str(f.alias) for f in Settings.model_fields.values()} | ENV_NAMES
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):
        name = argv.pop(0).split("=", 1)[0]
        if name not in names:
            return f"{name} is no setting"
    if argv[:1] == ["sudo"]:
        argv = argv[3:] if argv[1:2] == ["-u"] else argv[1:]
    dirs = top_level_dirs()
    for token in argv:
        if token.split("/", 1)[0] in dirs and "/" in token and not (ROOT / token).exists():
            return f"{token} does not exist"
        setting = re.fullmatch(r"((?:WXHOOK|WECHAT)_[A-Z0-9_]+)=.*", token)
        if setting and setting[1] not in names:  # e.g. docker run -e WXHOOK_...=
            return f"{setting[1]} is no setting"
    prog, args = Path(argv[0]).name, argv[1:]
    if prog == "wxhook":
        try:
            build_parser().parse_args(args)
        except SystemExit:
            return "the command line refuses it"
        return None
    if prog == "make":
        unknown = [a for a in args if not a.startswith("-") and "=" not in a
                   and a not in makefile_targets()]
        return f"no make target {unknown}" if unknown else None
    if prog in {"python", "python3"}:
        if args[:1] == ["-m"]:
            return None if importlib.util.find_spec(args[1]) else f"no module {args[1]}"
        script = ROOT / args[0]
        if not script.is_file():
            return f"no script {args[0]}"
        source = script.read_text(encoding="utf-8")
        missing = [a for a in args if a.startswith("--") and f'"{a.split("=")[0]}"' not in source]
        return f"{args[0]} has no option {missing}" if missing else None
    if prog in EXTERNAL or shutil.which(prog):
        return None
    return f"no program {prog}"


SH = [(b, c) for b in of("sh") for c in commands(b.code)]


@pytest.mark.parametrize(("block", "argv"), SH, ids=[f"{b.where}:{' '.join(c)[:40]}"
                                                      for b, c in SH])
def test_shell_commands_exist_as_written(block: Block, argv: list[str]):
    assert command_fault(list(argv)) is None, f"{block.where}: {shlex.join(argv)}: " + str(
        command_fault(list(argv)))


def test_the_shell_check_refuses_what_does_not_exist():
    for wrong in (["wxhook", "serve", "--wrokers", "2"], ["wxhook", "rules", "chek", "x"],
                  ["make", "docs-srve"], ["WXHOOK_DEADLNE=3", "make", "run"],
                  ["docker", "run", "-e", "WXHOOK_HANDLER=a:b", "wxhook:0.1.0"],
                  [".venv/bin/python", "bench/run.py", "--rounds-of", "3"],
                  ["cp", "deploy/systemd/wxhook.servic", "/etc"], ["wxhook-nope", "x"]):
        assert command_fault(wrong) is not None, wrong


# --------------------------------------------------------------------------- yaml


@pytest.mark.parametrize("block", of("yaml"), ids=lambda b: b.where)
def test_yaml_blocks_load_and_rules_pass_the_checker(block: Block):
    docs = list(yaml.safe_load_all(block.code))
    assert docs, block.where
    for doc in docs:
        if isinstance(doc, dict) and doc and set(doc) <= set(SECTIONS):
            _, problems = parse_rules(block.code.encode(), name=block.where)
            assert problems == [], problems


# --------------------------------------------------------------------------- dockerfile


@pytest.mark.parametrize("block", of("dockerfile"), ids=lambda b: b.where)
def test_dockerfile_blocks_use_known_instructions_and_the_projects_version(block: Block):
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for line in block.code.replace("\\\n", " ").splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        word, _, rest = line.strip().partition(" ")
        assert word in DOCKERFILE, f"{block.where}: {line}"
        if word == "FROM" and rest.startswith("wxhook:"):
            assert rest.split()[0] == f"wxhook:{version}", f"{block.where}: {line}"
