"""Webhook pushes: sign the exact body bytes, POST, retry on anything but 200.

:func:`sign` and :func:`retry_schedule` are pure. :class:`Pusher` runs each delivery as a named
task it tracks; :meth:`Pusher.aclose` cancels and awaits whatever is still running.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import aiohttp
import structlog

from gateway.intake.signature import sign
from gateway.sandbox.state import PushAttempt, Webhook

__all__ = ["PUSH_TIMEOUT", "Pusher", "retry_schedule", "sign"]

PUSH_TIMEOUT = 10.0
SIGNATURE_HEADER = "X-Payload-Signature"

log = structlog.get_logger(__name__)


def retry_schedule(delays: Sequence[float]) -> list[float]:
    """Seconds to wait before each attempt: the first goes at once, then one per delay."""
    return [0.0, *delays]


class Pusher:
    """Delivers notifications to webhooks in the background; owns its tasks."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        retry_delays: Sequence[float],
        on_attempt: Callable[[PushAttempt], Coroutine[Any, Any, None]],
    ) -> None:
        self._session = session
        self._schedule = retry_schedule(retry_delays)
        self._on_attempt = on_attempt
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def start(
        self,
        webhook: Webhook,
        body: bytes,
        notification_id: str,
        event_id: str,
        notification_type: str = "Unknown",
    ) -> None:
        """Begin delivering ``body`` to ``webhook``; retries run in the same task."""
        if self._closed:
            raise RuntimeError("the sandbox is shutting down; no new pushes")
        task = asyncio.create_task(
            self._deliver(webhook, body, notification_id, event_id, notification_type),
            name=f"sandbox.push:{notification_id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("sandbox.push_crashed", task=task.get_name(), error=repr(exc))

    async def aclose(self) -> None:
        """Cancel deliveries still running (retry waits included) and wait for them."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _deliver(
        self,
        webhook: Webhook,
        body: bytes,
        notification_id: str,
        event_id: str,
        notification_type: str,
    ) -> None:
        headers = {"Content-Type": "application/json"}
        if webhook.secret is not None:
            headers[SIGNATURE_HEADER] = sign(body, webhook.secret)
        for attempt, wait in enumerate(self._schedule, start=1):
            if wait:
                await asyncio.sleep(wait)
            started = time.monotonic()
            status, error = await self._post(webhook.url, body, headers)
            duration_ms = round((time.monotonic() - started) * 1000)
            await self._on_attempt(
                PushAttempt(
                    url=webhook.url,
                    webhook_id=webhook.id,
                    notification_id=notification_id,
                    event_id=event_id,
                    attempt=attempt,
                    status=status,
                    error=error,
                    at=time.time(),
                    notification_type=notification_type,
                    signature=headers.get(SIGNATURE_HEADER),
                    duration_ms=duration_ms,
                    timed_out=error is not None and error.startswith("timed out"),
                )
            )
            log.debug(
                "sandbox.push_attempt",
                webhook_id=webhook.id,
                notification_id=notification_id,
                attempt=attempt,
                status=status,
                error=error,
            )
            if status == 200:
                return
        log.info("sandbox.push_gave_up", webhook_id=webhook.id, notification_id=notification_id)

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int | None, str | None]:
        try:
            async with (
                asyncio.timeout(PUSH_TIMEOUT),
                self._session.post(url, data=body, headers=headers) as response,
            ):
                await response.read()
                return response.status, None
        except TimeoutError:
            return None, f"timed out after {PUSH_TIMEOUT}s"
        except aiohttp.ClientError as exc:
            return None, f"{type(exc).__name__}: {exc}"
