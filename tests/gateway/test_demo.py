"""`piigate demo` (the README's main command) really runs: embedded PostgreSQL and
Redis, sample data, the gateway with policy, audit and admin API, masking visible to
an analyst, and nothing left running afterwards."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(240)
def test_demo_runs_and_cleans_up():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "demo", "--no-wait", "--port", "0",
                           "--admin-port", "0"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=200)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "piigate is running." in out
    assert "demo self-check: dba sees 'customer001@example.invalid'" in out
    assert "ann sees 'customer001@example.invalid'" not in out
    assert "nothing left running" in out
