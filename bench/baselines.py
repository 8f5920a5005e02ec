"""The two baselines snapworker is measured against: competent hand-written per-message consumers.

``python -m bench.baselines noapi  --amqp-url URL --request-queue Q --result-queue R --error-queue E --prefetch N``
``python -m bench.baselines perapi ... --api-url http://127.0.0.1:PORT --token T --concurrency 16``

(a) ``noapi``: the ceiling of a per-message design. One aio-pika connection, a channel with publisher
confirms, ``set_qos(prefetch)`` (the worker's PREFETCH) and ``queue.consume(callback)``. aio-pika (aiormq) runs
each delivery's callback as its own task, so up to PREFETCH callbacks are in flight at once. The callback
validates the body (``SnapshotRequest.model_validate_json``; an invalid body gets an error reply), publishes one
persistent reply to the result (or error) queue with ``await exchange.publish(...)`` (the confirm is awaited),
then ``await message.ack()``. No API call at all, so no design that answers each message on its own can be
faster on this machine.

(b) ``perapi``: the same, plus one ``POST /v2/{project}/snapshots/batch-create`` per message with that message's
desktops, before replying; one shared aiohttp ClientSession whose connector allows ``--concurrency`` connections
(the worker's MAX_CONCURRENCY). It has no rate limiter and no retries, which flatters it: against the real API
(about 100 calls a minute) it would be throttled a hundredfold.

Both reply with a ``SnapshotResult`` like the worker's, so serialization costs the same. Both run until SIGTERM
and then print one line ``baseline totals {json}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

import aio_pika
import aiohttp
from aio_pika.abc import AbstractExchange, AbstractIncomingMessage
from pydantic import ValidationError

from snapworker.contract.models import INVALID_REQUEST_CODE, JobEntry, ResultError, SnapshotRequest, SnapshotResult

__all__ = ["main"]


def _request_body(request: SnapshotRequest) -> bytes:
    body: dict[str, object] = {"desktop_ids": list(request.desktop_ids)}
    if request.disk_type is not None:
        body["disk_type"] = request.disk_type
    for name in ("system_disk_snapshot", "data_disk_snapshot"):
        info = getattr(request, name)
        if info is not None:
            body[name] = info.model_dump(exclude_none=True)
    return json.dumps(body, separators=(",", ":")).encode()


class Baseline:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.counts: Counter[str] = Counter()
        self.http: aiohttp.ClientSession | None = None
        self.exchange: AbstractExchange | None = None

    async def call_api(self, request: SnapshotRequest) -> tuple[tuple[JobEntry, ...], tuple[ResultError, ...]]:
        assert self.http is not None
        url = f"{self.args.api_url}/v2/{request.project_id}/snapshots/batch-create"
        headers = {"Content-Type": "application/json", "X-Auth-Token": self.args.token}
        self.counts["api_calls"] += 1
        try:
            async with self.http.post(url, data=_request_body(request), headers=headers) as response:
                payload = await response.read()
                if response.status == 200:
                    job_id = str(json.loads(payload)["job_id"])
                    return (JobEntry(job_id=job_id, desktop_ids=request.desktop_ids),), ()
                error = ResultError(
                    desktop_ids=request.desktop_ids,
                    http_status=response.status,
                    error_code="HTTP",
                    error_msg=payload[:500].decode(errors="replace"),
                    api_request_id=response.headers.get("X-Request-Id"),
                    retryable=response.status >= 429,
                )
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
            error = ResultError(
                desktop_ids=request.desktop_ids,
                http_status=None,
                error_code="TRANSPORT",
                error_msg=repr(exc),
                retryable=True,
            )
        return (), (error,)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        assert self.exchange is not None
        request_id = message.message_id or str(uuid.uuid4())
        try:
            request = SnapshotRequest.model_validate_json(message.body)
        except ValidationError as exc:
            result = SnapshotResult(
                request_id=request_id,
                correlation_id=message.correlation_id,
                project_id=None,
                status="invalid",
                finished_at=datetime.now(UTC),
                errors=(
                    ResultError(
                        desktop_ids=(),
                        http_status=None,
                        error_code=INVALID_REQUEST_CODE,
                        error_msg=str(exc)[:2000],
                        retryable=False,
                    ),
                ),
            )
        else:
            jobs: tuple[JobEntry, ...] = ()
            errors: tuple[ResultError, ...] = ()
            if self.args.mode == "perapi":
                jobs, errors = await self.call_api(request)
            result = SnapshotResult(
                request_id=request.request_id or request_id,
                correlation_id=message.correlation_id,
                project_id=request.project_id,
                status="accepted" if not errors else "failed",
                finished_at=datetime.now(UTC),
                jobs=jobs,
                errors=errors,
            )
        queue = self.args.result_queue if result.status == "accepted" else self.args.error_queue
        reply = aio_pika.Message(
            result.model_dump_json().encode(),
            content_type="application/json",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            correlation_id=result.correlation_id,
            headers={"x-snapworker-status": result.status},
        )
        await self.exchange.publish(reply, routing_key=queue)  # waits for the broker's confirm
        await message.ack()
        self.counts[result.status] += 1

    async def run(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if self.args.mode == "perapi":
            connector = aiohttp.TCPConnector(limit=self.args.concurrency)
            self.http = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=35))
        conn = await aio_pika.connect(self.args.amqp_url, client_properties={"connection_name": "bench-baseline"})
        try:
            channel = await conn.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=self.args.prefetch)
            self.exchange = channel.default_exchange
            queue = await channel.get_queue(self.args.request_queue, ensure=False)
            await queue.consume(self.on_message)
            await stop.wait()
        finally:
            await conn.close()
            if self.http is not None:
                await self.http.close()
            print("baseline totals " + json.dumps(dict(self.counts), sort_keys=True), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baselines", description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["noapi", "perapi"])
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--request-queue", required=True)
    parser.add_argument("--result-queue", required=True)
    parser.add_argument("--error-queue", required=True)
    parser.add_argument("--prefetch", type=int, required=True)
    parser.add_argument("--api-url", default="")
    parser.add_argument("--token", default="")
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args(argv)
    if args.mode == "perapi" and not args.api_url:
        parser.error("perapi needs --api-url")
    asyncio.run(Baseline(args).run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
