"""What operators see: Prometheus metrics (``metrics``), ``/healthz`` and ``/readyz`` (``health``, with the
event-loop lag of ``loop_lag``), logging with redaction (``logs``) and the periodic progress line (``progress``).

The runtime hands these a read-only view of itself; nothing here imports the runtime.
"""
