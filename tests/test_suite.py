"""The suite itself: property tests draw the same examples on every run (outside `make fuzz`);
Redis tests fail rather than skip where CI asks for them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st


@pytest.mark.skipif(os.environ.get("HYPOTHESIS_PROFILE") == "fuzz",
                    reason="`make fuzz` draws new examples on purpose")
def test_a_property_test_draws_the_same_examples_every_run():
    def draw() -> list[bytes]:
        drawn: list[bytes] = []

        @given(st.binary(min_size=8))
        def prop(b: bytes) -> None:
            drawn.append(b)

        prop()
        return drawn

    first = draw()
    assert first and first == draw()


@pytest.mark.parametrize(("require", "outcome"), [("1", "failed"), ("", "skipped")])
def test_redis_tests_fail_without_redis_server_when_required(tmp_path: Path, require: str,
                                                              outcome: str) -> None:
    # CI sets WXHOOK_REQUIRE_REDIS=1 (.ci/run): a machine without redis-server must fail
    # the Redis tests there, not skip them and pass.
    bin_dir = tmp_path / "bin"  # a PATH with Python and no redis-server
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    env = {**os.environ, "PATH": str(bin_dir), "WXHOOK_REQUIRE_REDIS": require}
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "tests/test_store_redis.py::test_store_contract",
                          "tests/test_store_sentinel.py"], cwd=root, env=env,
                         capture_output=True, text=True, timeout=120)
    summary = run.stdout.strip().splitlines()[-1]
    assert outcome in summary and ("failed" in summary) == (require == "1"), run.stdout[-2000:]

