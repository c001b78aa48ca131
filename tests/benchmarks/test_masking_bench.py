"""The masking benchmark's pure parts: its gateway config is valid and sets up the two
users it compares; bad arguments are refused. No servers are started."""
from __future__ import annotations

import pytest

from benchmarks import masking_bench
from benchmarks.targets import Upstream
from gateway.app import build_components
from gateway.config import load_config


def test_its_config_loads_and_puts_both_users_under_policy(tmp_path):
    upstream = Upstream("127.0.0.1", 5432, "postgres", None, "bench")
    path = tmp_path / "piigate.toml"
    path.write_text(masking_bench.gateway_config(upstream, 6543, tmp_path))
    cfg = load_config(str(path))
    comps = build_components(cfg, check_only=True)
    assert {name: set(u.roles) for name, u in cfg.users.items()} == {
        name: {role} for name, role in masking_bench.USERS.items()}
    # both take the same path (analysis, decision): no rule makes either unrestricted,
    # and only "reader" has a rule that lets it read PII
    rules = comps.policy.rules
    assert not any(r.unrestricted for r in rules)
    assert [r.name for r in rules if "reader" in r.roles] == ["readers-see-pii"]
    assert not any("analyst" in r.roles for r in rules)

def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        masking_bench.parse_args(["--modes", "simple,bogus"])
    with pytest.raises(SystemExit):
        masking_bench.parse_args(["--reps", "0"])
    args = masking_bench.parse_args(["--seconds", "3", "--modes", "prepared"])
    assert args.modes == ["prepared"] and args.seconds == 3
