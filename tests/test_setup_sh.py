"""tests/setup.sh (run by `make test`): installs only missing tools, never starts a service."""

import os
import shutil
import stat
import subprocess
from pathlib import Path

from tests.support import ROOT

STUB = """#!/bin/bash
echo "$(basename "$0") $*" >> {log}
if [ "$(basename "$0")" = apt-get ] && [ "$1" = install ]; then
  if [ -x {policy} ]; then {policy} nginx start; echo "policy-rc.d says $?" >> {log}
  else echo "no policy-rc.d" >> {log}; fi
fi
[ "$(basename "$0")" = id ] && echo 0
exit 0
"""


def run_setup(tmp_path: Path, *, uid: str = "0") -> tuple[subprocess.CompletedProcess[str], str]:
    bin_dir, log, policy = tmp_path / "bin", tmp_path / "calls.log", tmp_path / "policy-rc.d"
    bin_dir.mkdir()
    for tool in ("apt-get", "systemctl", "id"):
        path = bin_dir / tool
        path.write_text(STUB.format(log=log, policy=policy).replace("echo 0", f"echo {uid}"))
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    # The stubs and the few utilities the script uses: every tool it looks for on PATH
    # counts as missing, whatever this machine has installed.
    for tool in ("bash", "chmod", "rm", "basename"):
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/bin/{tool}")
    env = {"PATH": str(bin_dir), "WXHOOK_POLICY_RC_D": str(policy),
           "HOME": os.environ.get("HOME", "/tmp")}
    res = subprocess.run([str(bin_dir / "bash"), str(ROOT / "tests" / "setup.sh")], env=env,
                         capture_output=True, text=True, timeout=30)
    return res, log.read_text() if log.exists() else ""


def test_installs_without_recommends_under_a_policy_that_refuses_every_start(tmp_path):
    res, calls = run_setup(tmp_path)
    assert res.returncode == 0, res.stderr
    installs = [line for line in calls.splitlines() if line.startswith("apt-get install")]
    assert installs, calls
    assert all("--no-install-recommends" in line for line in installs)
    assert calls.count("policy-rc.d says 101") == len(installs) and "no policy-rc.d" not in calls
    assert "apt-get install -y -q --no-install-recommends redis-server" in calls
    for unit in ("prometheus.service", "redis-server.service"):
        assert f"systemctl disable --quiet {unit}" in calls
    assert not (tmp_path / "policy-rc.d").exists()  # removed afterwards


def test_an_existing_policy_rc_d_is_left_alone(tmp_path):
    policy = tmp_path / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    res, _ = run_setup(tmp_path)
    assert res.returncode == 0 and policy.read_text() == "#!/bin/sh\nexit 101\n"


def test_without_root_it_installs_nothing_and_says_what_will_skip(tmp_path):
    res, calls = run_setup(tmp_path, uid="1000")
    assert res.returncode == 0 and "apt-get install" not in calls
    assert "(not root with apt-get): the tests that need them will skip" in res.stdout
