"""What ``ecgw sandbox`` prints: credentials, a webhook secret and curl lines to paste."""

from __future__ import annotations

from gateway.sandbox.admin import ADMIN_PATH

__all__ = ["SANDBOX_WEBHOOK_SECRET", "sandbox_banner"]

SANDBOX_WEBHOOK_SECRET = "sandbox-webhook-secret"  # noqa: S105 - a well-known sandbox default
"""The secret the printed lines register webhooks with (the sandbox signs with whatever
secret a webhook was registered with)."""


def sandbox_banner(
    root_url: str, base_url: str, token_url: str, client_id: str, client_secret: str
) -> str:
    """Config tables and curl lines for a sandbox at ``root_url``."""
    token = (
        f"TOKEN=$(curl -s {token_url} -d grant_type=client_credentials "
        f"-d client_id={client_id} -d client_secret={client_secret} "
        "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')"
    )
    auth = '-H "Authorization: Bearer $TOKEN"'
    json_ = "-H 'Content-Type: application/json'"
    return "\n".join(
        [
            f"sandbox listening on {root_url}",
            "",
            "[api]",
            f'base_url = "{base_url}"',
            f'token_url = "{token_url}"',
            f'client_id = "{client_id}"',
            f'client_secret = "{client_secret}"',
            "",
            "[webhook]",
            'listen = "127.0.0.1:8080"',
            f'secret = "{SANDBOX_WEBHOOK_SECRET}"',
            "",
            "# a token, the events, webhooks:",
            token,
            f"curl -s {auth} {base_url}/events",
            f"curl -s {auth} {json_} {base_url}/webhooks -d "
            f'\'{{"webhookUrl": "http://127.0.0.1:8080/notify", '
            f'"webhookSecret": "{SANDBOX_WEBHOOK_SECRET}"}}\'',
            f"curl -s {auth} {base_url}/webhooks/logs",
            "# simulate an event (or: ecgw sandbox event pricecurve|location-lpc|resource-lpc):",
            f"curl -s {auth} {json_} {base_url}/simulation/events/pricecurve -d '{{}}'",
            "# what the sandbox received and pushed (no token needed):",
            f"curl -s {root_url}{ADMIN_PATH}/reports",
            f"curl -s {root_url}{ADMIN_PATH}/pushes",
            "",
        ]
    )
