# The README's two commands: `make run` and `make test`. Each installs what it needs first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run test lint docs docs-deps docs-serve docs-config bench bench-deps bench-quick \
	profile clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "wxhook needs Python 3.11+"'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e '.[dev]'
	@# The editable install maps `wxhook` with an import hook that mypy and editors cannot
	@# follow; a path entry per source folder lets them find the package from any directory.
	$(PY) -c 'import pathlib, sysconfig; pathlib.Path(sysconfig.get_path("purelib"), "wxhook-src.pth").write_text("$(CURDIR)/handlers\n$(CURDIR)/service\n")'
	@touch $(STAMP)

install: $(STAMP)

# With none of the three WECHAT_* credentials (environment or .env) this runs `wxhook dev`:
# the server plus the built-in sandbox WeChat API. With credentials it runs the production
# server. A malformed setting stops here with the message `wxhook serve` gives (exit 2).
run: install
	@$(PY) -m wxhook.server.config; rc=$$?; \
	if [ $$rc = 0 ]; then exec $(VENV)/bin/wxhook serve; \
	elif [ $$rc = 3 ]; then exec $(VENV)/bin/wxhook dev; \
	else exit $$rc; fi

test: install
	@bash tests/setup.sh
	$(VENV)/bin/pytest -q

# The property tests with new random examples, 20 times as many as `make test` draws (it
# draws the same ones every run, so it passes or fails the same way): several minutes.
.PHONY: fuzz
fuzz: install
	HYPOTHESIS_PROFILE=fuzz $(VENV)/bin/pytest -q $$(grep -l hypothesis tests/test_*.py)

# The rules ruff applies, and why, are in pyproject.toml; mypy runs strict.
lint: install
	$(VENV)/bin/ruff check handlers service tests docs bench
	$(VENV)/bin/mypy handlers service

# The documentation site (mkdocs.yml, docs/) into site/. --strict: a broken link or anchor
# fails the build, and so does a configuration page that no longer matches Settings.
DOCS_STAMP := $(VENV)/.docs-installed

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[docs]'
	@touch $(DOCS_STAMP)

docs-deps: $(DOCS_STAMP)

docs: docs-deps
	$(VENV)/bin/mkdocs build --strict

docs-serve: docs-deps
	$(VENV)/bin/mkdocs serve

# Rewrites docs/configuration.md from Settings and the rules file's schema (commit the result).
docs-config: install
	$(PY) docs/reference.py

# The benchmark's load generator is Debian's wrk; WeRoBot and gunicorn come from the extra.
bench-deps: install
	$(PY) -m pip install -q -e '.[bench]'
	@command -v wrk >/dev/null || apt-get install -y -q wrk

bench: bench-deps
	$(PY) bench/run.py

bench-quick: bench-deps
	$(PY) bench/run.py --quick

profile: bench-deps
	$(PY) -m pip install -q py-spy
	$(PY) bench/profile.py --scenario plain --seconds 10

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache *.egg-info
