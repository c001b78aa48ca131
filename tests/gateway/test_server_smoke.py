"""The transparent relay with a real client: the smallest end-to-end check."""
import asyncpg
import pytest

from .conftest import PASSWORD


async def test_asyncpg_roundtrip(gateway, sample_db):
    conn = await asyncpg.connect(gateway.dsn(sample_db.dbname))
    try:
        assert await conn.fetchval("SELECT count(*) FROM orders") == 30
        assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
    finally:
        await conn.close()


async def test_wrong_password_and_unknown_user_look_the_same(gateway, sample_db):
    errors = []
    for user, pw in (("alice", "wrong"), ("nobody", PASSWORD)):
        with pytest.raises(asyncpg.InvalidPasswordError) as exc:
            await asyncpg.connect(gateway.dsn(sample_db.dbname, user=user, password=pw))
        errors.append((exc.value.sqlstate, str(exc.value).replace(user, "<user>")))
    assert errors[0] == errors[1]
    assert errors[0][0] == "28P01"
