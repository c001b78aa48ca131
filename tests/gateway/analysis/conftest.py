"""Fixtures for the analyzer tests: the security LiveSchema (see analysis_schema.py)."""
from __future__ import annotations

import pytest

from analysis_schema import security_schema
from gateway.schema import LiveSchema


@pytest.fixture(scope="session")
def schema() -> LiveSchema:
    return security_schema()
