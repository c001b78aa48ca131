"""The admin HTTP API, the approval console and /metrics (aiohttp).

``create_app(service, config, metrics, health_probe)`` builds the application;
``start_admin(app, host, port)`` serves it. ``AdminConfig.from_table`` parses the
``[admin]`` section; ``Metrics`` is what the gateway increments.
"""
from gateway.admin.app import ROUTES, create_app, openapi_document, start_admin
from gateway.admin.config import AdminConfig, Approver, hash_token, new_token
from gateway.admin.metrics import Metrics

__all__ = ["AdminConfig", "Approver", "Metrics", "ROUTES", "create_app", "hash_token",
           "new_token", "openapi_document", "start_admin"]
