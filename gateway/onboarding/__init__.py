"""Onboarding with Spark: ``ecgw api ...`` and the ``ecgw sandbox event`` helper.

Modules, core first: ``reconcile`` (pure: what the API has that the inbox lacks),
``events`` (pure: simulation requests from command-line flags), ``spark`` (the HTTP client
for ``/webhooks``, ``/webhooks/logs`` and ``/events``), ``commands`` (the ``cmd_*`` handlers).
"""
