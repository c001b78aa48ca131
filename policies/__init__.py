"""Who may do what. ``policies.decide(request, policy) -> Decision`` (pure, never raises);
``policies.load_policy(path) -> Policy`` (raises ``PolicyError`` naming file and line)."""
from policies.decide import decide
from policies.loader import PolicyError, default_policy, load_policy, parse_policy

__all__ = ["decide", "default_policy", "load_policy", "parse_policy", "PolicyError"]
