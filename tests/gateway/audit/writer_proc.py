"""A process that writes audit records as fast as it can (for the kill -9 test).

Usage: python writer_proc.py PATH FSYNC GROUP_MS
Prints the seq of every record after record() returned (i.e. acknowledged durable),
one per line, flushed: what the parent knows was acknowledged before it killed us.
"""
import asyncio
import sys

from gateway.audit import AuditConfig, AuditTrail, records


async def main(path: str, fsync: str, group_ms: float) -> None:
    cfg = AuditConfig.from_table({"sinks": ["file"], "instance": "gw-crash", "checkpoint_every": 200,
                                  "file": {"path": path, "fsync": fsync, "group_ms": group_ms,
                                           "rotate_bytes": 256 * 1024}}, "<writer_proc>")
    trail = await AuditTrail(cfg).start()
    out = sys.stdout

    async def producer(n: int) -> None:
        i = 0
        while True:
            i += 1
            rec = await trail.record(records.statement_decision(
                session_id=f"s{n}", user="load", sql=f"SELECT ssn FROM customers WHERE id = {i}",
                fingerprint="fp", action="read", effect="mask", rule="r"), required=True)
            out.write(f"{rec['seq']}\n")
            out.flush()

    await asyncio.gather(*(producer(n) for n in range(16)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
