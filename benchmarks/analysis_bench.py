"""Analyzer and analysis-cache costs (pure CPU; run: .venv/bin/python benchmarks/analysis_bench.py).

Prints, per statement: the literal-insensitive cache hit for pgbench's point query
with a new literal every time (target <= 5 us), cache misses (full analysis) for
the point query and a 3-table join with a CTE, the two candidate key functions
(normalize vs fingerprint), and the hit rate over a simulated ``pgbench -M simple``
stream (TPC-B-like script, different literals in every statement).
"""
from __future__ import annotations

import os
import pathlib
import random
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests" / "gateway" / "analysis"))

from pglast import parser  # noqa: E402

from analysis_schema import security_schema  # noqa: E402
from gateway.analysis import AnalysisCache, analyze  # noqa: E402
from gateway.analysis.cache import simple_key  # noqa: E402

POINT = "SELECT abalance FROM pgbench_accounts WHERE aid = {};"
JOIN_CTE = ("WITH big AS (SELECT customer_id, sum(amount) AS total FROM orders GROUP BY customer_id) "
            "SELECT c.id, c.city, b.total, a.abalance FROM customers c JOIN big b ON b.customer_id = c.id "
            "JOIN pgbench_accounts a ON a.aid = c.id WHERE c.city = {} ORDER BY b.total DESC LIMIT 10")


def per_call(fn, n: int, repeat: int = 5) -> float:
    """Microseconds per call: the best of ``repeat`` runs of ``n`` calls (the
    machine is shared; the minimum is the least disturbed measurement)."""
    best = float("inf")
    for r in range(repeat):
        t0 = time.perf_counter()
        for i in range(r * n, (r + 1) * n):
            fn(i)
        best = min(best, time.perf_counter() - t0)
    return best / n * 1e6


def pgbench_stream(n_tx: int, rng: random.Random):
    for _ in range(n_tx):
        aid, bid, tid, delta = rng.randint(1, 100000), rng.randint(1, 1), rng.randint(1, 10), rng.randint(-5000, 5000)
        yield "BEGIN;"
        yield f"UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid};"
        yield f"SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"
        yield f"UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = {tid};"
        yield f"UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = {bid};"
        yield (f"INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
               f"VALUES ({tid}, {bid}, {aid}, {delta}, CURRENT_TIMESTAMP);")
        yield "END;"


def main() -> None:
    schema = security_schema()
    path = ("public",)
    print(f"schema: {len(schema.relations)} relations, {sum(map(len, schema.functions.values()))} functions")

    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    n = 10000
    texts = [POINT.format(i + 1) for i in range(5 * n)]   # every text new: no exact-text hits
    print(f"pglast normalize   (point query): {per_call(lambda i: parser.normalize(texts[i]), n):7.2f} us")
    print(f"pglast fingerprint (point query): {per_call(lambda i: parser.fingerprint(texts[i]), n):7.2f} us")

    cache = AnalysisCache(maxsize=10)
    cache.analyze(POINT.format(0), schema, path)
    hit = per_call(lambda i: cache.analyze(texts[i], schema, path), n)
    assert cache.hits_shape >= n, "expected literal-insensitive hits"
    key = per_call(lambda i: simple_key(texts[i]), n)
    print(f"cache hit, point query, new literal each time: {hit:7.2f} us  (target <= 5 us; "
          f"its key, simple_key, {key:.2f} us)")
    # texts simple_key does not emulate (a comment, a quoted identifier, ...) take
    # PostgreSQL's own normalize as the key
    commented = [f"/* app */ {t}" for t in texts]
    cache.analyze("/* app */ " + POINT.format(0), schema, path)
    hit_norm = per_call(lambda i: cache.analyze(commented[i], schema, path), n)
    print(f"cache hit, same with a comment (normalize key): {hit_norm:7.2f} us")
    hit_exact = per_call(lambda i: cache.analyze(POINT.format(0), schema, path), n)
    print(f"cache hit, exact same text                   : {hit_exact:7.2f} us")

    m = 100
    print(f"cache miss (full analysis), point query      : {per_call(lambda i: analyze(POINT.format(i), schema, path), m, 3):7.1f} us")
    print(f"cache miss (full analysis), 3-table join+CTE : {per_call(lambda i: analyze(JOIN_CTE.format(i), schema, path), m, 3):7.1f} us")
    import gateway.analysis.statements as st
    saved = st.crosscheck
    st.crosscheck = lambda text, names: frozenset()
    try:
        print(f"  of which sqlglot cross-check, point query  : "
              f"{per_call(lambda i: saved(POINT.format(i), set()), m, 2):7.1f} us")
        print(f"  of which sqlglot cross-check, join+CTE     : "
              f"{per_call(lambda i: saved(JOIN_CTE.format(i), set()), m, 2):7.1f} us")
    finally:
        st.crosscheck = saved

    rng = random.Random(7)
    cache = AnalysisCache()
    stream = list(pgbench_stream(5000, rng))
    t0 = time.perf_counter()
    for sql in stream:
        cache.analyze(sql, schema, path)
    dt = time.perf_counter() - t0
    total = cache.hits_exact + cache.hits_shape + cache.misses
    print(f"pgbench -M simple stream: {total} statements, hit rate "
          f"{(cache.hits_exact + cache.hits_shape) / total:.4f} (exact {cache.hits_exact}, "
          f"literal-insensitive {cache.hits_shape}, misses {cache.misses}), "
          f"{dt / total * 1e6:.2f} us/statement on average")


if __name__ == "__main__":
    main()
