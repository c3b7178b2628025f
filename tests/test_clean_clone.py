"""The README's test command passes from a fresh clone with no ``../shared`` beside it."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
THIS = "tests/test_clean_clone.py"


def readme_pytest_command() -> list[str]:
    """The pytest line of ``scripts/test.sh`` (what the README and CI run), with this interpreter."""
    line = next(ln for ln in (REPO / "scripts" / "test.sh").read_text().splitlines()
                if ln.startswith("python3 -m pytest"))
    return [sys.executable, *[w for w in shlex.split(line)[1:] if w != "$@"]]


@pytest.mark.slow
@pytest.mark.skipif(not (REPO / ".git").exists(), reason="not a git checkout: nothing to clone")
def test_suite_passes_from_a_clone_without_shared_data(tmp_path):
    clone = tmp_path / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    assert not (tmp_path / "shared").exists()
    env = {k: v for k, v in os.environ.items()
           if k not in ("INSTANNO_REQUIRE_SHARED", "INSTANNO_MODELS", "PYTEST_ADDOPTS")}
    # the clone's own sources and weights, in the environment already installed (no reinstall)
    env["PYTHONPATH"] = str(clone / "src")
    env["OMP_NUM_THREADS"] = "1"
    cmd = [*readme_pytest_command(), "-p", "no:cacheprovider", "--deselect", THIS]
    run = subprocess.run(cmd, cwd=clone, env=env, capture_output=True, text=True, timeout=1500)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-4000:]
    assert re.search(r"\d+ passed", out) and not re.search(r"\d+ (failed|errors?)\b", out), out[-4000:]
    # the only skips are the tests that need the training data, and they say so
    skips = [ln for ln in out.splitlines() if ln.startswith("SKIPPED")]
    assert all("needs_shared:" in ln for ln in skips), "\n".join(skips)
