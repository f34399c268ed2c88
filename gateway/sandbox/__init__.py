"""A local stand-in for Volue Spark's Energy Coordination API.

Speaks the wire format of the packaged OpenAPI document (validated with
:mod:`gateway.contract`): OAuth client-credentials tokens, ``GET /events`` with paging,
``POST /reports`` (with ``Idempotency-Key`` support and injectable faults), webhook
registration (enable/disable) and HMAC-signed pushes with retries, the webhook notification
logs (one entry per push attempt), and the four simulation endpoints. Used by
``ecgw sandbox``, ``ecgw demo``, the gateway's tests and the benchmark::

    async with run_sandbox() as sandbox:
        sandbox.add_faults(Fault(status=503, retry_after="1"), Fault(drop_after_accept=True))
        ...  # point the gateway at sandbox.base_url / sandbox.token_url
        await sandbox.wait_for_reports(1, timeout=5)

Modules, core first: ``faults`` (the fault queue), ``auth`` (tokens), ``state`` (reports
ledger, event paging, webhooks), ``simulation`` (event builders), ``push`` (signing and
delivery), ``api`` and ``admin`` (HTTP handlers), ``server`` (:class:`Sandbox`,
:func:`run_sandbox`).
"""

from __future__ import annotations

from gateway.intake.signature import sign
from gateway.sandbox.faults import Fault
from gateway.sandbox.server import Sandbox, run_sandbox
from gateway.sandbox.state import PushAttempt, ReceivedReport, ReportAttempt

__all__ = [
    "Sandbox",
    "Fault",
    "run_sandbox",
    "ReceivedReport",
    "ReportAttempt",
    "PushAttempt",
    "sign",
]
