"""The operator commands ``snapworker publish``, ``results`` and ``check``: from parsed arguments to exit code.

cli.py parses; these functions load the settings, run the work (in ``tools_publish``, ``tools_results`` and
``tools_check``) on a fresh event loop and turn snapworker errors into a plain message on stderr and a
non-zero exit code. Exit codes: 0 all well, 1 a problem (a broker failure, an invalid line, a result that was
not ``accepted``, a failed check), 2 unusable input (bad settings: handled by cli.main; a missing file).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine
from typing import Any, TextIO

from pydantic import ValidationError

from snapworker.client import SnapshotClient
from snapworker.contract.intake import validation_problems
from snapworker.contract.models import SnapshotRequest
from snapworker.errors import ConfigError, InvalidMessage, ResultTimeout, SnapworkerError
from snapworker.settings import load_settings
from snapworker.tools.broker import BrokerTools
from snapworker.tools.check import Finding, run_checks
from snapworker.tools.publish import dry_run, publish_file, publish_one, request_from_options
from snapworker.tools.results import follow_results, result_json
from snapworker.words import plural

__all__ = ["check", "publish", "results"]


def _run(command: str, work: Coroutine[Any, Any, int], err: TextIO) -> int:
    # The broker libraries log the failures we report ourselves, in plainer words: keep them quiet.
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        return asyncio.run(work)
    except SnapworkerError as exc:
        if isinstance(exc, ConfigError):
            raise  # cli.main reports bad settings (exit 2)
        err.write(f"snapworker {command}: {exc}\n")
        return 1
    except OSError as exc:  # the file to publish cannot be read
        err.write(f"snapworker {command}: {exc}\n")
        return 2


def publish(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``snapworker publish``: one request from ``--project``/``--desktop`` or many from ``--file``."""
    one_request_only = (args.desktop, args.disk_type, args.wait, args.request_id, args.snapshot_name, args.priority)
    if args.file is not None and (any(one_request_only) or args.description is not None or args.dry_run):
        err.write(
            "snapworker publish: --desktop, --disk-type, --request-id, --snapshot-name, --description, --priority, "
            "--wait and --dry-run go with --project, not --file (a line of the file carries its own priority)\n"
        )
        return 2
    if args.file is None and not any(d.strip() for d in args.desktop or ()):
        err.write("snapworker publish: give at least one --desktop (or --file with one request a line)\n")
        return 2
    if args.file is None and any(not d.strip() for d in args.desktop or ()):
        err.write("snapworker publish: a --desktop is empty: give each one a desktop ID\n")
        return 2
    if args.wait and args.reply_to:
        err.write("snapworker publish: --wait reads the result from its own reply queue: drop --reply-to\n")
        return 2
    if args.wait and args.dry_run:
        err.write("snapworker publish: --dry-run publishes nothing, so no result comes: drop --wait\n")
        return 2
    settings = load_settings()
    request: SnapshotRequest | None = None
    if args.file is None:
        try:
            request = request_from_options(
                args.project,
                tuple(args.desktop or ()),
                disk_type=args.disk_type,
                request_id=args.request_id,
                snapshot_name=args.snapshot_name,
                description=args.description,
                priority=args.priority,
            )
        except ValidationError as exc:
            err.write("snapworker publish: invalid request:\n  " + "\n  ".join(validation_problems(exc)) + "\n")
            return 2
        if args.dry_run:  # validated like a publish, and nothing sent: no broker needed
            try:
                out.write(dry_run(request, settings, reply_to=args.reply_to))
            except InvalidMessage as exc:
                err.write(f"snapworker publish: {exc}\n")
                return 2
            return 0

    async def work() -> int:
        async with SnapshotClient(settings, connection_name="snapworker-publish") as client:
            if request is None:
                report = await publish_file(
                    client, args.file, reply_to=args.reply_to, in_flight=args.in_flight, err=err
                )
                out.write(report.summary() + "\n")
                return 0 if report.ok else 1
            try:
                correlation_id, result = await publish_one(
                    client, request, reply_to=args.reply_to, wait=args.wait, wait_s=args.timeout
                )
            except ResultTimeout as exc:
                err.write(f"snapworker publish: {exc}\n")
                return 1
            if result is None:
                out.write(f"confirmed 1 message (correlation id {correlation_id})\n")
                return 0
            out.write(result_json(result, indent=2) + "\n")
            return 0 if result.status == "accepted" else 1

    return _run("publish", work(), err)


def results(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``snapworker results``: print and consume results until ``--count`` or ``--timeout``."""
    settings = load_settings()
    if args.completions and not args.queue and not settings.completion_queue:
        err.write("snapworker results: --completions reads SNAPWORKER_COMPLETION_QUEUE, which is not set\n")
        return 2
    default = [settings.completion_queue] if args.completions else [settings.result_queue, settings.error_queue]
    queues: list[str] = args.queue or default

    async def work() -> int:
        async with BrokerTools(settings, connection_name="snapworker-results") as broker:
            # Say it before taking anything: reading removes the results from their queues.
            err.write(f"reading (and removing) results from {', '.join(queues)}\n")
            read = await follow_results(
                broker, queues, out=out, err=err, jsonl=args.jsonl, count=args.count, max_seconds=args.timeout
            )
        if args.count is not None and read < args.count:
            arrived = f"{read} of {plural(args.count, 'result')} arrived"
            err.write(f"snapworker results: {arrived} within {args.timeout:g} s\n")
            return 1
        return 0

    return _run("results", work(), err)


def check(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``snapworker check``: report every finding on ``out``; exit 1 if any of them is a FAIL."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        out.write(Finding("FAIL", "settings", str(exc)).line() + "\n")
        return 1

    async def work() -> int:
        findings = await run_checks(settings, declare=args.declare, project_id=args.project)
        for finding in findings:
            out.write(finding.line() + "\n")
        failures = sum(f.level == "FAIL" for f in findings)
        out.write("all checks passed\n" if not failures else f"{plural(failures, 'problem')} found\n")
        return 1 if failures else 0

    return _run("check", work(), err)
