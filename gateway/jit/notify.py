"""Webhook notifications (generic JSON and Slack-compatible), off the hot path.

``Notifier.notify(event)`` only puts the event on a bounded queue and returns; a
background task delivers it to every configured URL, retrying with exponential
backoff. A slow or failing webhook can delay only other notifications, never a
statement, an approval or the gateway (when the queue is full, new events are
dropped and counted in ``dropped``).
"""
from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Iterable

import aiohttp

log = logging.getLogger("piigate.jit.notify")

#: Event types worth telling humans about.
NOTIFIED = frozenset({"jit.request.created", "jit.request.approved", "jit.request.denied",
                      "jit.request.expired", "jit.grant.revoked", "jit.grant.expired"})


def slack_text(event: dict[str, Any]) -> str:
    kind = event.get("type", "event").removeprefix("jit.")
    who = event.get("principal", "?")
    rid = event.get("request_id") or ""
    gid = event.get("grant_id") or ""
    parts = [f"piigate: {kind}", f"user {who}"]
    if event.get("action"):
        parts.append(f"action {event['action']}")
    if event.get("columns"):
        parts.append("columns " + ", ".join(".".join(c) for c in event["columns"]))
    if event.get("categories"):
        parts.append("categories " + ", ".join(event["categories"]))
    if event.get("reason"):
        parts.append(f"reason: {event['reason']}")
    if event.get("by"):
        parts.append(f"by {event['by']}")
    if rid:
        parts.append(f"request {rid}")
    if gid:
        parts.append(f"grant {gid}")
    if event.get("approve_url"):
        parts.append(f"approve at {event['approve_url']}")
    return " | ".join(parts)


class Notifier:
    def __init__(self, urls: Iterable[str] = (), slack_urls: Iterable[str] = (),
                 retries: int = 5, backoff_s: float = 0.5, queue_size: int = 1000,
                 timeout_s: float = 5.0, max_backoff_s: float = 60.0):
        self.urls, self.slack_urls = tuple(urls), tuple(slack_urls)
        self.retries, self.backoff_s, self.max_backoff_s = retries, backoff_s, max_backoff_s
        self.timeout_s = timeout_s
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(queue_size)
        self._task: asyncio.Task | None = None
        self._deliveries: set[asyncio.Task] = set()
        self._http: aiohttp.ClientSession | None = None
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    @property
    def enabled(self) -> bool:
        return bool(self.urls or self.slack_urls)

    def notify(self, event: dict[str, Any]) -> None:
        if not self.enabled or event.get("type") not in NOTIFIED:
            return
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="piigate-notify")
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.dropped += 1
            log.warning("webhook queue full; dropped %s", event.get("type"))

    async def _run(self) -> None:
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        while True:
            event = await self._queue.get()
            targets = [(u, event) for u in self.urls]
            targets += [(u, {"text": slack_text(event)}) for u in self.slack_urls]
            for url, body in targets:
                task = asyncio.create_task(self._deliver(url, body))
                self._deliveries.add(task)
                task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, url: str, body: dict[str, Any]) -> bool:
        data = json.dumps(body, separators=(",", ":"), default=str).encode()
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                assert self._http is not None
                async with self._http.post(url, data=data,
                                           headers={"Content-Type": "application/json"}) as resp:
                    if resp.status < 300:
                        self.delivered += 1
                        return True
                    why = f"HTTP {resp.status}"
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                why = f"{type(e).__name__}: {e}"
            if attempt < self.retries:
                log.info("webhook %s failed (%s); retry %d in %.2fs", url, why, attempt + 1, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
        self.failed += 1
        log.warning("webhook %s gave up after %d attempts (%s)", url, self.retries + 1, why)
        return False

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait until queued events are handed out and deliveries finished (tests, shutdown)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while (not self._queue.empty() or self._deliveries) and loop.time() < end:
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        for task in [self._task, *self._deliveries]:
            if task is not None:
                task.cancel()
        for task in [self._task, *self._deliveries]:
            if task is not None:
                try:
                    await task
                except (asyncio.CancelledError, Exception):
                    pass
        self._task = None
        if self._http is not None:
            await self._http.close()
            self._http = None
