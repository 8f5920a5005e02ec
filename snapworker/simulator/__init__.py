"""A fake Huawei Cloud Workspace API on loopback, for tests, the demo and the benchmark; never used in production.

- ``app``: the aiohttp application and :class:`Simulator` (run it in-process or with ``snapworker simulate``).
- ``state``: accounts, rate limit, jobs and their progress; ``snapshots``: the snapshots jobs created.
- ``service``: answers as the real API does (error codes, throttling); ``cli``: the command-line options.
- ``verify``: the gateway's side of AK/SK signing (the client signs in ``snapworker.cloud.signing``).
"""
