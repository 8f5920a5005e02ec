"""What crosses the queue: the request, result and completion models, their JSON Schemas, and the rules that read
a request message (``intake``) and keep a result within what the broker and consumers accept (``result_size``).

Pure: no broker, HTTP or asyncio imports, so the worker, the publisher client and the CLI apply the same rules.
"""
