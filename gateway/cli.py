"""``piigate``: the command line.

    piigate serve --config FILE      run the gateway
    piigate check --config FILE      validate the config (and the files it names)
    piigate passwd [--password P]    turn a password into a SCRAM verifier for the config
    piigate demo                     embedded PostgreSQL + Redis + sample data + gateway

Other subcommands (catalog, policy, audit, requests, grants, tokens) are registered by
the modules that own them.
"""
from __future__ import annotations

import argparse
import asyncio
import getpass
import importlib
import logging
import signal
import sys

from .config import ConfigError, load_config


def _cmd_passwd(args) -> int:
    from .protocol.scram import make_verifier
    password = args.password
    if password is None:
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("piigate: the passwords differ; nothing written", file=sys.stderr)
            return 1
    if not password:
        print("piigate: empty password refused", file=sys.stderr)
        return 1
    print(make_verifier(password, iterations=args.iterations))
    return 0


def _cmd_check(args) -> int:
    try:
        cfg = load_config(args.config)
        from .app import build_components
        build_components(cfg, check_only=True)
    except ConfigError as e:
        print(f"piigate: {e}", file=sys.stderr)
        return 2
    from .config import config_warnings
    for warning in config_warnings(cfg):
        print(f"piigate: warning: {args.config}: {warning}", file=sys.stderr)
    print(f"{args.config}: ok ({len(cfg.users)} users, upstream {cfg.upstream.host}:{cfg.upstream.port}, "
          f"listen {cfg.server.host}:{cfg.server.port})")
    return 0


def _cmd_serve(args) -> int:
    try:
        cfg = load_config(args.config)
    except ConfigError as e:
        print(f"piigate: {e}", file=sys.stderr)
        return 2
    from .server import install_uvloop
    install_uvloop()
    from .app import run_gateway
    try:
        asyncio.run(run_gateway(cfg, ready_file=args.ready_file))
    except ConfigError as e:
        print(f"piigate: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo
    return run_demo(args)


# modules that add their own subcommands with register(subparsers)
PLUGINS = ["gateway.catalog_cli", "gateway.policy_cli", "gateway.audit.cli", "gateway.jit.cli"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="piigate", description="PostgreSQL gateway with a PII catalog, "
                                "masking and just-in-time approval")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config", "-c", required=True, help="the gateway's TOML config file")
    s.add_argument("--ready-file", help=argparse.SUPPRESS)
    s.set_defaults(func=_cmd_serve)

    s = sub.add_parser("check", help="validate a config file without starting")
    s.add_argument("--config", "-c", required=True)
    s.set_defaults(func=_cmd_check)

    s = sub.add_parser("passwd", help="turn a password into a SCRAM-SHA-256 verifier for [users.NAME]")
    s.add_argument("--password", help="the password (prompted when omitted)")
    s.add_argument("--iterations", type=int, default=4096)
    s.set_defaults(func=_cmd_passwd)

    s = sub.add_parser("demo", help="run a demo on embedded PostgreSQL and Redis")
    s.add_argument("--port", type=int, default=6432, help="gateway port (default 6432)")
    s.add_argument("--admin-port", type=int, default=8080, help="admin API port (default 8080)")
    s.add_argument("--no-wait", action="store_true", help=argparse.SUPPRESS)
    s.set_defaults(func=_cmd_demo)

    for name in PLUGINS:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        register = getattr(mod, "register", None)
        if register:
            register(sub)
    return p


#: the commands that run the gateway (see main: SIGPIPE stays ignored for them)
_SERVERS = (_cmd_serve, _cmd_demo)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if hasattr(signal, "SIGPIPE") and args.func not in _SERVERS:
        # a report piped into `head` ends quietly, as other command-line tools do.
        # Never for the servers: the event loop writes to sockets with write(), and
        # a peer gone at the wrong moment (PostgreSQL closing after a FATAL while a
        # client still sends) would deliver SIGPIPE and end the whole gateway;
        # ignored, it is an EPIPE on that one connection
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
