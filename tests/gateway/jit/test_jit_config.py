"""[jit] parsing: defaults, values, and errors that name the key."""
import pytest

from gateway.jit import ConfigError, JitConfig

B32 = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"


def test_defaults_and_values(monkeypatch):
    assert JitConfig.from_table({}, "g.toml") == JitConfig()
    monkeypatch.setenv("HOOK_SECRET_TEST", "s3cret")
    cfg = JitConfig.from_table({
        "hold_timeout_s": 30, "redis_prefix": "pg1:", "webhook_urls": ["https://x/y"],
        "hook_url": "https://decide", "hook_secret_env": "HOOK_SECRET_TEST",
        "token_key": "0123456789abcdef", "totp": {"alice": B32}}, "g.toml")
    assert cfg.hold_timeout_s == 30 and cfg.redis_prefix == "pg1:"
    assert cfg.hook_secret == b"s3cret" and cfg.token_key == b"0123456789abcdef"
    assert cfg.totp_secrets["alice"] == b"12345678901234567890"
    assert JitConfig.from_table({"prefix": "r:"}, "g").redis_prefix == "r:"
    assert JitConfig.from_table({"prefix": "r:", "redis_prefix": "j:"}, "g").redis_prefix == "j:"


@pytest.mark.parametrize("table, needle", [
    ({"hold_timeout_s": "soon"}, "g.toml: [jit].hold_timeout_s: expected a number"),
    ({"hold_timeout_s": -1}, "[jit].hold_timeout_s: expected a positive value"),
    ({"webhook_urls": ["ftp://x"]}, "[jit].webhook_urls: 'ftp://x' is not an http(s) URL"),
    ({"hook_url": "https://d"}, "[jit].hook_url is set but hook_secret"),
    ({"token_key": "short"}, "[jit].token_key: too short"),
    ({"totp": {"bob": "!!"}}, "[jit.totp].bob: TOTP secret is not valid base32"),
    ({"hook_secret_env": "PIIGATE_SURELY_UNSET_VAR"}, "environment variable PIIGATE_SURELY_UNSET_VAR is not set"),
    ({"hold_timout_s": 3}, "unknown key(s) hold_timout_s"),
    ({"redis_prefix": ""}, "[jit].redis_prefix: must not be empty"),
    ({"webhook_retries": 1.5}, "[jit].webhook_retries: expected an integer"),
])
def test_errors_name_the_key(table, needle):
    with pytest.raises(ConfigError) as e:
        JitConfig.from_table(table, "g.toml")
    assert needle in str(e.value)
