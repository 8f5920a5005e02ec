"""The ``snapworker`` command. Each sub-command lives in the module that does the work; this file only parses."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from snapworker import __version__
from snapworker.errors import ConfigError

__all__ = ["main"]


def _cmd_schema(args: argparse.Namespace) -> int:
    from snapworker.schemas import write_schemas

    for path in write_schemas(Path(args.out)):
        print(f"wrote {path}")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from snapworker.cloud import simulator

    code: int = simulator.run(args)
    return code


def _cmd_run(args: argparse.Namespace) -> int:
    from snapworker.process import run_worker
    from snapworker.settings import load_settings

    return run_worker(load_settings())


def _cmd_demo(args: argparse.Namespace) -> int:
    from snapworker import demo
    from snapworker.logs import configure_logging
    from snapworker.settings import load_settings

    settings = load_settings(log_level=args.log_level)
    configure_logging(settings)
    return demo.main(settings)


_SETTINGS_HELP = """settings (environment):
  SNAPWORKER_AMQP_URL        broker URL (default amqp://guest:guest@localhost:5672/)
  SNAPWORKER_API_URL         Workspace endpoint (default https://workspace.{REGION}.myhuaweicloud.com)
  SNAPWORKER_AUTH_TOKEN      IAM token, or SNAPWORKER_ACCESS_KEY + SNAPWORKER_SECRET_KEY for AK/SK signing
  SNAPWORKER_MAX_BATCH, SNAPWORKER_LINGER_MS, SNAPWORKER_PREFETCH, SNAPWORKER_RATE_LIMIT, ...: see README.md
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snapworker",
        description="Batch Huawei Cloud Workspace snapshot requests from RabbitMQ into rate-limited API calls.",
        epilog="Settings come from SNAPWORKER_* environment variables; see README.md.",
    )
    parser.add_argument("--version", action="version", version=f"snapworker {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    schema = commands.add_parser(
        "schema",
        help="write the JSON Schema files of the message contract",
        description="Write snapshot-request.schema.json and snapshot-result.schema.json from the models.",
        epilog="example: snapworker schema --out schemas/",
    )
    schema.add_argument("--out", default="schemas", help="folder to write to (default: schemas)")
    schema.set_defaults(handler=_cmd_schema)

    run = commands.add_parser(
        "run",
        help="run the worker until SIGTERM",
        description="Consume snapshot requests, batch them into API calls, publish one result per request.",
        epilog=_SETTINGS_HELP + "\nexample: SNAPWORKER_AUTH_TOKEN=... snapworker run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.set_defaults(handler=_cmd_run)

    demo = commands.add_parser(
        "demo",
        help="run the whole flow against an in-process simulator and the local RabbitMQ",
        description="Publish a realistic mix of requests, run a worker until every result is in, print a summary.",
        epilog="uses SNAPWORKER_AMQP_URL; declares and deletes its own queues\nexample: snapworker demo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--log-level", default="WARNING", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    demo.set_defaults(handler=_cmd_demo)

    from snapworker.cloud import simulator

    simulate = commands.add_parser(
        "simulate",
        help="serve a local fake of the Workspace API (development, tests, demos)",
        description="Serve a faithful local fake of the Workspace snapshot and job APIs on loopback.",
        epilog="example: snapworker simulate --port 8808 --token dev-token",
    )
    simulator.add_arguments(simulate)
    simulate.set_defaults(handler=_cmd_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        print(f"snapworker: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code
