"""The Huawei Cloud Workspace edge: the HTTP client (``client``, ``jobs``), request signing (``signing``),
accounts (``accounts``), answers and retries (``responses``, ``retry``) and rate limiting (``limiter``, ``bucket``,
``pause``, ``waiters``, and ``shared_limiter`` on Redis). The simulator lives in ``snapworker.simulator``."""
