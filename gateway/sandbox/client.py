"""Calling the sandbox's API the way a partner's own tooling would: token, then a POST."""

from __future__ import annotations

from typing import Any

import aiohttp

from gateway.sandbox.server import Sandbox

__all__ = ["api_post"]


async def api_post(
    session: aiohttp.ClientSession, sandbox: Sandbox, path: str, body: dict[str, Any]
) -> dict[str, Any]:
    """POST ``body`` to ``base_url + path`` with a fresh client-credentials token."""
    form = {
        "grant_type": "client_credentials",
        "client_id": sandbox.client_id,
        "client_secret": sandbox.client_secret,
    }
    async with session.post(sandbox.token_url, data=form) as resp:
        token = (await resp.json())["access_token"]
    async with session.post(
        f"{sandbox.base_url}{path}", json=body, headers={"Authorization": f"Bearer {token}"}
    ) as resp:
        if resp.status >= 300:
            raise RuntimeError(f"sandbox {path} answered {resp.status}: {await resp.text()}")
        result: dict[str, Any] = await resp.json()
        return result
