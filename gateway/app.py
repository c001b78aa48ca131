"""Assembling a running gateway from a Config: the server, and (when configured) the
catalog, policies, audit trail, JIT service and admin API.

Without a ``[policy]`` section the gateway is a transparent, audited relay: every
user is unrestricted. With one, every statement is analysed and decided.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import dataclass, field
from typing import Any

from .config import Config, ConfigError, section_error
from .server import Gate, Gateway

log = logging.getLogger("piigate")


@dataclass
class Components:
    """What the config builds before anything is started (validated, pure)."""
    policy: Any = None
    audit_config: Any = None
    jit_config: Any = None
    admin_config: Any = None
    extras: dict = field(default_factory=dict)


def build_components(cfg: Config, check_only: bool = False) -> Components:
    """Validate and build everything the config names. Raises ConfigError."""
    comps = Components()
    if cfg.policy_file:
        from policies.loader import PolicyError, load_policy
        try:
            comps.policy = load_policy(cfg.resolve_path(cfg.policy_file))
        except PolicyError as e:
            raise ConfigError(str(e)) from None
    if cfg.catalog_file:
        from catalog.loader import CatalogError, load_catalog_file
        try:
            load_catalog_file(cfg.resolve_path(cfg.catalog_file))
        except CatalogError as e:
            raise ConfigError(str(e)) from None
    sections = cfg.sections
    if "audit" in sections:
        from .audit.config import AuditConfig
        try:
            comps.audit_config = AuditConfig.from_table(sections["audit"], cfg.path,
                                                        **_audit_defaults(cfg))
        except ValueError as e:
            raise section_error(cfg, "audit", e) from None
    if "jit" in sections or cfg.redis_url:
        from .jit.config import JitConfig
        table = dict(sections.get("jit", {}))
        if cfg.redis_url:
            table.setdefault("redis_url", cfg.redis_url)
        table.setdefault("prefix", cfg.redis_prefix)
        try:
            comps.jit_config = JitConfig.from_table(table, "jit")
        except ValueError as e:
            raise section_error(cfg, "jit", e) from None
    if "admin" in sections:
        try:
            from .admin.config import AdminConfig
        except ImportError:
            AdminConfig = None
        if AdminConfig is not None:
            try:
                comps.admin_config = AdminConfig.from_table(sections["admin"], "admin")
            except ValueError as e:
                raise section_error(cfg, "admin", e) from None
    return comps


def _audit_defaults(cfg: Config) -> dict:
    import inspect
    from .audit.config import AuditConfig
    params = inspect.signature(AuditConfig.from_table).parameters
    out = {}
    if "instance" in params:
        out["instance"] = cfg.server.instance_id
    if "base_dir" in params:
        out["base_dir"] = os.path.dirname(os.path.abspath(cfg.path))
    if "default_redis_url" in params and cfg.redis_url:
        out["default_redis_url"] = cfg.redis_url
    return out


class Runtime:
    """The started services around the server. ``close()`` stops them all."""

    def __init__(self, cfg: Config, comps: Components):
        self.cfg = cfg
        self.comps = comps
        self.gateway: Gateway | None = None
        self.engine = None
        self.audit = None
        self.jit = None
        self.admin_runner = None
        self.admin_port: int | None = None
        self.metrics = None
        self._refresher: asyncio.Task | None = None
        self._refresh_now = asyncio.Event()
        self.schema_reads = 0               # schema reads after the first (tests, metrics)

    async def start(self) -> Gateway:
        cfg, comps = self.cfg, self.comps
        gate: Gate = Gate()
        self.metrics = _make_metrics()
        if comps.audit_config is not None:
            from .audit.trail import AuditTrail, AuditUnavailable
            try:
                self.audit = await AuditTrail(comps.audit_config).start()
            except AuditUnavailable as e:
                raise ConfigError(f"{cfg.path}: [audit]: cannot write the audit trail: {e}") from None
        if comps.jit_config is not None:
            from .jit.store import JitService
            self.jit = JitService.from_config(comps.jit_config, audit=self._audit_event)
            await self.jit.start()
        policy = comps.policy
        if policy is None:
            from policies.model import ANY, Effect, Policy, Rule
            policy = Policy(rules=(Rule("transparent", Effect.ALLOW, roles=frozenset({ANY}),
                                        categories=frozenset({ANY})),), version="transparent",
                            source="<no [policy] section: every user is unrestricted>")
        from .analysis import AnalysisCache
        from .session import Engine, PolicyGate
        schema_ready = True
        try:
            catalog, schema = await self._load_catalog_and_schema()
        except _UpstreamUnreachable as e:
            # start anyway (the database may simply be starting too): clients get
            # 08001 while it is down, and sessions under policy a clear 57P03 until
            # the schema is read, retried every second
            log.warning("%s; starting without the schema and retrying", e)
            catalog, schema = self._file_catalog(), _empty_schema()
            schema_ready = False
        self.engine = Engine(schema=schema, catalog=catalog, policy=policy, cache=AnalysisCache(),
                             audit=self.audit, jit=self.jit,
                             metrics=self.metrics, instance=cfg.server.instance_id,
                             hold_timeout_s=getattr(comps.jit_config, "hold_timeout_s", 300.0),
                             admin_url=self._admin_url(), on_ddl=self._refresh_now.set,
                             pseudonym_installed=_pseudonym_installed(schema), db_user=cfg.upstream.user,
                             database=cfg.upstream.database)
        self.engine.schema_ready = schema_ready
        gate = PolicyGate(self.engine)
        self.gateway = Gateway(cfg, gate)
        if self.audit is not None:
            self.gateway.on_auth_failure = self._on_auth_failure
            self.gateway.on_session_refused = self._on_session_refused
        await self.gateway.start()
        self._refresher = asyncio.ensure_future(self._refresh_loop())
        if self.jit is not None:
            end = bool(getattr(comps.jit_config, "end_sessions_on_revoke", False))
            await self.jit.on_revocation(lambda grant_id: self._revoked(grant_id, end))
        await self._start_admin()
        return self.gateway

    async def reload(self) -> bool:
        """SIGHUP: read the policy file again, and the catalog file with the schema.
        A policy file that does not load changes nothing: the error (file, line,
        problem) is logged and recorded, and the gateway goes on with the policy it
        had. Sessions go on under the new policy, but those whose user it now treats
        differently (under PII policy or not) are ended: what was checked when they
        started (startup settings, the relay's mode) no longer holds. False: not
        reloaded."""
        self._refresh_now.set()             # the catalog file is read with the schema
        if not self.cfg.policy_file or self.engine is None:
            log.info("reload: no [policy] file in %s; the catalog is read again", self.cfg.path)
            return True
        from policies.loader import PolicyError, load_policy
        old = self.engine.policy
        try:
            new = load_policy(self.cfg.resolve_path(self.cfg.policy_file))
        except PolicyError as e:
            log.error("reload: the policy was NOT changed (still %s): %s", old.version, e)
            self._record({"type": "policy.reload", "status": "failed", "policy_version": old.version,
                          "error": str(e)})
            return False
        if new.version == old.version:
            log.info("reload: policy %s unchanged", old.version)
            return True
        self.engine.set_policy(new)
        ended = 0
        for relay in list(self.gateway.sessions.values() if self.gateway else ()):
            s = relay.state.get("s")
            if s is not None and self.engine.under_policy(s.principal) != s.under_policy:
                relay.fatal("57P01", "piigate: the policy was reloaded and now treats this user differently, "
                            "so this session was ended", "reconnect")
                ended += 1
        log.info("reload: policy %s -> %s (%d rules); %d session(s) ended because their user's treatment "
                 "changed", old.version, new.version, len(new.rules), ended)
        self._record({"type": "policy.reload", "status": "ok", "policy_version": new.version,
                      "previous_version": old.version, "rules": len(new.rules), "sessions_ended": ended})
        return True

    def _record(self, event: dict) -> None:
        if self.audit is not None:
            try:
                self.audit.emit(event)
            except Exception as e:  # noqa: BLE001 - logged; the reload itself stands
                log.error("audit: %s", e)

    def _admin_url(self) -> str:
        table = self.cfg.sections.get("admin", {})
        listen = table.get("listen") if isinstance(table, dict) else None
        return f"http://{listen}" if listen else ""

    async def _load_catalog_and_schema(self):
        import asyncpg
        from catalog.model import Catalog
        from .schema import LiveSchema
        up = self.cfg.upstream
        try:
            conn = await asyncpg.connect(host=up.host, port=up.port, user=up.user, password=up.password,
                                         database=up.database, ssl=_asyncpg_ssl(up),
                                         timeout=up.connect_timeout_s)
        except Exception as e:
            # down, starting up or not answering: worth waiting for; anything else
            # (wrong credentials, no such database) is the config's fault
            transient = isinstance(e, (OSError, asyncio.TimeoutError, asyncpg.CannotConnectNowError))
            raise (_UpstreamUnreachable if transient else ConfigError)(
                f"{self.cfg.path}: upstream: cannot connect to {up.host}:{up.port} as "
                f"{up.user} to read the schema: {e}") from None
        try:
            from .introspect import load_catalog_and_schema
            try:
                from .lineage import with_view_lineage as annotate
            except ImportError:
                annotate = None
            catalog, schema, warnings = await load_catalog_and_schema(
                conn, self.cfg.resolve_path(self.cfg.catalog_file), self.cfg.catalog_comment_tags,
                annotate=annotate)
            for w in warnings:
                log.warning("catalog: %s", w)
            return catalog, schema
        finally:
            await conn.close()

    def _file_catalog(self):
        """The catalog file alone (validated: a bad file still stops the start), for
        a start without the database."""
        from catalog.loader import build_catalog, load_catalog_file
        path = self.cfg.resolve_path(self.cfg.catalog_file)
        cfile = load_catalog_file(path) if path else None
        return build_catalog(cfile.entries if cfile else (), [], _empty_schema())

    async def _ddl_settles(self, quiet_s: float = 0.2, longest_s: float = 2.0) -> None:
        """Let a burst of DDL finish before reading: a read of a large schema costs the
        event loop tenths of a second, and a migration creating 1,000 tables would
        otherwise cause hundreds of them. Waits until no DDL has ended for ``quiet_s``
        (``longest_s`` at most); cut short as soon as a statement under policy waits
        for the read (Engine.hold_waiters; looked at every 10 ms)."""
        eng = self.engine
        if eng is None:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        give_up = now + longest_s
        quiet_from, seen = now, eng.ddl_generation
        while not eng.hold_waiters:
            now = loop.time()
            if eng.ddl_generation != seen:
                quiet_from, seen = now, eng.ddl_generation
            if now - quiet_from >= quiet_s or now >= give_up:
                return
            await asyncio.sleep(0.01)

    async def _refresh_loop(self) -> None:
        """Re-read the schema and catalog after DDL and on an interval (every second
        while it has never been read)."""
        while True:
            ready = self.engine is None or getattr(self.engine, "schema_ready", True)
            interval = self.cfg.catalog_refresh_s if ready else 1.0
            try:
                await asyncio.wait_for(self._refresh_now.wait(), interval)
                await self._ddl_settles()
            except asyncio.TimeoutError:
                pass
            self._refresh_now.clear()
            # statements held for DDL committed before this point may go on after it
            generation = self.engine.ddl_generation if self.engine is not None else 0
            self.schema_reads += 1
            try:
                catalog, schema = await self._load_catalog_and_schema()
            except Exception as e:
                log.warning("schema refresh failed (keeping the previous one): %s", e)
                if self.engine is not None:
                    self.engine.schema_read(generation)
                continue
            if self.engine is not None and not self.engine.schema_ready:
                self.engine.schema, self.engine.catalog = schema, catalog
                self.engine.pseudonym_installed = _pseudonym_installed(schema)
                self.engine.schema_ready = True
                log.info("the database is reachable: schema %s, catalog %s (%d columns) loaded",
                         schema.version, catalog.version, len(catalog))
            elif self.engine is not None and (schema.version != self.engine.schema.version
                                              or catalog.version != self.engine.catalog.version):
                self.engine.schema, self.engine.catalog = schema, catalog
                self.engine.pseudonym_installed = _pseudonym_installed(schema)
                log.info("schema %s, catalog %s (%d columns) loaded", schema.version, catalog.version,
                         len(catalog))
            if self.engine is not None:
                self.engine.schema_read(generation)

    async def _start_admin(self) -> None:
        table = self.cfg.sections.get("admin")
        if not table or self.jit is None:
            return
        try:
            from aiohttp import web
            from .admin.app import create_app
        except ImportError:
            log.warning("admin API not available in this build")
            return
        app = create_app(self.jit, self.comps.admin_config, self.metrics, self._health)
        self.admin_runner = web.AppRunner(app, access_log=None)
        await self.admin_runner.setup()
        host, _, port = str(table.get("listen", "127.0.0.1:8080")).rpartition(":")
        site = web.TCPSite(self.admin_runner, host or "127.0.0.1", int(port))
        await site.start()
        self.admin_port = site._server.sockets[0].getsockname()[1]
        log.info("admin API on http://%s:%d", host, self.admin_port)

    def _revoked(self, grant_id: str, end_sessions: bool) -> None:
        gate = self.gateway.gate if self.gateway else None
        if gate is None or not hasattr(gate, "revoked"):
            return
        for relay in list(self.gateway.sessions.values()):
            gate.revoked(relay, grant_id, end_sessions)

    async def _health(self) -> dict:
        out = {"gateway": "ok", "sessions": len(self.gateway.sessions) if self.gateway else 0}
        if self.engine is not None:
            out["schema"] = ("ok" if self.engine.schema_ready
                             else "not read yet: the database was unreachable at start (retrying)")
        if self.audit is not None:
            out["audit"] = "ok" if self.audit.healthy else f"failing: {self.audit.last_error}"
        if self.jit is not None:
            try:
                out["redis"] = "ok" if await self.jit.ping() else "unreachable"
            except Exception as e:
                out["redis"] = f"unreachable: {e}"
        return out

    async def _audit_event(self, event: dict) -> None:
        if self.audit is not None:
            try:
                await self.audit.record(event)
            except Exception as e:
                log.error("audit: %s", e)

    def _on_auth_failure(self, user: str, client_addr: str) -> None:
        if self.audit is not None:
            self.audit.emit({"type": "auth.failure", "user": user, "client_addr": client_addr})

    def _on_session_refused(self, user: str, database: str, client_addr: str, sqlstate: str,
                            message: str) -> None:
        if self.audit is not None:
            from .audit.records import session_refused
            self.audit.emit(session_refused(user=user, database=database, client_addr=client_addr,
                                            sqlstate=sqlstate, reason=message))

    async def close(self) -> None:
        if self._refresher:
            self._refresher.cancel()
            await asyncio.gather(self._refresher, return_exceptions=True)
        if self.gateway:
            await self.gateway.close()
        if self.admin_runner:
            await self.admin_runner.cleanup()
        if self.jit:
            await self.jit.close()
        if self.audit:
            await self.audit.close()


class _UpstreamUnreachable(ConfigError):
    """The schema could not be read because the database could not be reached."""


def _empty_schema():
    from .schema import LiveSchema
    return LiveSchema()


def _pseudonym_installed(schema) -> bool:
    """The keyed-hash strategy needs piigate.pseudonym() in the database (installed by
    an administrator, key out of reach of the gateway's role); without it, redact."""
    return any(f.schema == "piigate" for f in schema.functions_named("pseudonym"))


def _make_metrics():
    try:
        from .admin.metrics import Metrics
    except ImportError:
        return None
    return Metrics()


def _asyncpg_ssl(up):
    if up.sslmode == "disable":
        return False
    import ssl
    if up.sslmode in ("verify-ca", "verify-full"):
        ctx = ssl.create_default_context(cafile=up.sslrootcert)
        ctx.check_hostname = up.sslmode == "verify-full"
        return ctx
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def run_gateway(cfg: Config, ready_file: str | None = None) -> None:
    runtime = Runtime(cfg, build_components(cfg))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except NotImplementedError:
            pass
    reloads: set = set()

    def _reload() -> None:
        task = asyncio.ensure_future(runtime.reload())
        reloads.add(task)
        task.add_done_callback(reloads.discard)
    try:
        loop.add_signal_handler(signal.SIGHUP, _reload)
    except (NotImplementedError, AttributeError):
        pass
    gw = await runtime.start()
    log.info("piigate %s listening on %s:%d", cfg.server.instance_id, cfg.server.host, gw.port)
    from .config import config_warnings
    for warning in config_warnings(cfg):
        log.warning("%s", warning)
    if ready_file:
        tmp = ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{gw.port} {runtime.admin_port or 0}")
        os.replace(tmp, ready_file)
    import gc
    gc.collect()
    gc.freeze()         # measured: removes GC pauses of up to ~10 ms at p99 on the relay
    try:
        await stop.wait()
    finally:
        await runtime.close()
