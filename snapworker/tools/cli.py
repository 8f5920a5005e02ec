"""The ``snapworker`` command. Each sub-command lives in the module that does the work; this file only parses."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from snapworker.errors import BrokerRefused, ConfigError, SnapworkerError

__all__ = ["main"]


def _cmd_schema(args: argparse.Namespace) -> int:
    from snapworker.contract.schemas import write_schemas

    for path in write_schemas(Path(args.out)):
        print(f"wrote {path}")
    return 0


def _cmd_simulate(args: argparse.Namespace) -> int:
    from snapworker.simulator import app as simulator

    code: int = simulator.run(args)
    return code


def _cmd_run(args: argparse.Namespace) -> int:
    from snapworker.runtime.process import run_worker
    from snapworker.settings import load_settings

    return run_worker(load_settings())


def _cmd_demo(args: argparse.Namespace) -> int:
    from snapworker.ops.logs import configure_logging
    from snapworker.settings import load_settings
    from snapworker.tools import demo

    settings = load_settings(log_level=args.log_level)
    configure_logging(settings)
    return demo.main(settings)


def _cmd_publish(args: argparse.Namespace) -> int:
    from snapworker.tools import commands as tools

    return tools.publish(args)


def _cmd_results(args: argparse.Namespace) -> int:
    from snapworker.tools import commands as tools

    return tools.results(args)


def _cmd_check(args: argparse.Namespace) -> int:
    from snapworker.tools import commands as tools

    return tools.check(args)


def _cmd_replay(args: argparse.Namespace) -> int:
    from snapworker.tools import replay as tools_replay

    return tools_replay.replay(args)


def _cmd_top(args: argparse.Namespace) -> int:
    from snapworker.tools import top as tools_top

    return tools_top.top(args)


_SETTINGS_HELP = """settings (environment):
  SNAPWORKER_AMQP_URL        broker URL (default amqp://guest:guest@localhost:5672/)
  SNAPWORKER_API_URL         Workspace endpoint (default https://workspace.{REGION}.myhuaweicloud.com)
  SNAPWORKER_AUTH_TOKEN      IAM token, or SNAPWORKER_ACCESS_KEY + SNAPWORKER_SECRET_KEY for AK/SK signing
  SNAPWORKER_MAX_BATCH, SNAPWORKER_LINGER_MS, SNAPWORKER_PREFETCH, SNAPWORKER_RATE_LIMIT, ...: see README.md
"""


class _VersionAction(argparse.Action):
    """``--version``, reading package metadata only when asked (it costs every other command start-up time)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help=str(kwargs.get("help", "")))

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        import snapworker

        print(f"snapworker {snapworker.__version__}")  # to stdout, like argparse's own version action
        parser.exit()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="snapworker",
        description="Batch Huawei Cloud Workspace snapshot requests from RabbitMQ into rate-limited API calls.",
        epilog="Settings come from SNAPWORKER_* environment variables; see README.md.",
    )
    parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    schema = commands.add_parser(
        "schema",
        help="write the JSON Schema files of the message contract",
        # the names as written (contract.schemas.SCHEMA_FILES would load pydantic on every command's start)
        description="Write the JSON Schema files of the message contract from the models:\n"
        "  snapshot-request.schema.json     what a publisher sends\n"
        "  snapshot-result.schema.json      the one result of each request\n"
        "  snapshot-completion.schema.json  how each request's jobs ended (with job tracking)",
        epilog="example: snapworker schema --out schemas/",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    schema.add_argument("--out", default="schemas", help="folder to write to (default: schemas)")
    schema.set_defaults(handler=_cmd_schema)

    run = commands.add_parser(
        "run",
        help="run the worker until SIGTERM or Ctrl-C",
        description="Consume snapshot requests, batch them into API calls, publish one result per request.",
        epilog=_SETTINGS_HELP
        + "\nSIGTERM or Ctrl-C stops it gracefully (in-flight calls finish, unanswered requests are requeued);\n"
        "a second Ctrl-C exits at once.\n"
        "\nexit codes: 0 stopped (SIGTERM/SIGINT), 2 invalid settings, 3 the broker refused the login or the\n"
        "vhost (retrying cannot help; an unreachable broker is retried with a backoff of up to 30 s), 130 a\n"
        "second Ctrl-C cut the drain short\n"
        "\nexample: SNAPWORKER_AUTH_TOKEN=... snapworker run",
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

    _add_tool_parsers(commands)
    _add_queue_parsers(commands)

    from snapworker.simulator import cli as sim_cli  # the options only: the server (aiohttp.web) loads when it runs

    simulate = commands.add_parser(
        "simulate",
        help="serve a local fake of the Workspace API (development, tests, demos)",
        description="Serve a faithful local fake of the Workspace snapshot and job APIs on loopback.",
        epilog="example: snapworker simulate --port 8808 --token dev-token",
        formatter_class=sim_cli.HelpFormatter,
    )
    sim_cli.add_arguments(simulate)
    simulate.set_defaults(handler=_cmd_simulate)
    return parser


_BROKER_HELP = """settings (environment):
  SNAPWORKER_AMQP_URL        broker URL (default amqp://guest:guest@localhost:5672/)
  SNAPWORKER_REQUEST_QUEUE   where requests go (default snapworker.requests)
  SNAPWORKER_RESULT_QUEUE    accepted results without reply_to (default snapworker.results)
  SNAPWORKER_ERROR_QUEUE     other results without reply_to (default snapworker.errors)
"""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def _add_tool_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    publish = commands.add_parser(
        "publish",
        help="queue snapshot requests: one from options, or many from a JSON Lines file",
        description="Validate and queue snapshot requests; waits for the broker's confirms and prints how many\n"
        "were confirmed. Invalid lines of a file are reported with their line number and not published.\n"
        "Exit code 1 when anything was not published (with --wait: when the result is not accepted).",
        epilog=_BROKER_HELP + "  SNAPWORKER_MAX_MESSAGE_BYTES  larger requests are refused before publishing\n"
        "\nexamples:\n"
        "  snapworker publish --project P1 --desktop d1 --desktop d2 --wait\n"
        "  snapworker publish --project P1 --desktop d1 --snapshot-name pre-upgrade --request-id up-7 --dry-run\n"
        "  snapworker publish --project P1 --desktop d1 --priority urgent --wait\n"
        '  snapworker publish --file requests.jsonl   # lines like {"project_id": "P1", "desktop_ids": ["d1"]}\n'
        "  producer | snapworker publish --file - --reply-to my-replies",
        formatter_class=raw,
    )
    source = publish.add_mutually_exclusive_group(required=True)
    source.add_argument("--project", metavar="P", help="project ID of the one request")
    source.add_argument("--file", metavar="F.jsonl", help="JSON Lines file, one request a line; - for stdin")
    publish.add_argument("--desktop", action="append", metavar="D", help="desktop ID (repeat for more)")
    publish.add_argument("--disk-type", choices=["SYSTEM_DISK", "DATA_DISKS", "ALL"], help="disks to snapshot")
    publish.add_argument("--request-id", metavar="ID", help="request_id of the one request (echoed in its result)")
    publish.add_argument(
        "--snapshot-name", metavar="NAME", help="name of the snapshots (of the disks --disk-type covers)"
    )
    publish.add_argument("--description", metavar="TEXT", help="description of the snapshots")
    publish.add_argument(
        "--priority",
        choices=["normal", "urgent"],
        help="urgent: served before bulk requests (sets the body field and the AMQP priority, 9; normal: 0)",
    )
    publish.add_argument(
        "--dry-run", action="store_true", help="print the exact body and properties it would publish; publish nothing"
    )
    publish.add_argument("--reply-to", metavar="Q", help="queue for the results (default: result/error queue)")
    publish.add_argument("--wait", action="store_true", help="wait for the result and print it (with --project)")
    publish.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="S",
        help="with --wait: at most S s (default: the worker's worst case)",
    )
    publish.add_argument(
        "--in-flight", type=_positive_int, default=256, metavar="N", help="messages awaiting confirms at once (256)"
    )
    publish.set_defaults(handler=_cmd_publish)

    results = commands.add_parser(
        "results",
        help="print results from the result and error queues (consumes them)",
        description="Print results as they arrive, a table row each (or --jsonl).\n"
        "This CONSUMES: a printed result is acked and so removed from its queue. Use it on queues\n"
        "no service relies on. Stops after --count results or --timeout seconds, else at Ctrl-C;\n"
        "exit code 1 when --count results did not arrive in time.",
        epilog=_BROKER_HELP
        + "  SNAPWORKER_COMPLETION_QUEUE   what --completions reads: completions of requests without reply_to\n"
        "\nexamples:\n  snapworker results --count 10 --timeout 60\n"
        "  snapworker results --queue my-replies --jsonl\n  snapworker results --completions --count 1",
        formatter_class=raw,
    )
    results.add_argument("--queue", action="append", metavar="Q", help="queue to read, repeatable (default: both)")
    results.add_argument("--count", type=_positive_int, metavar="N", help="stop after N results; takes no more")
    results.add_argument("--timeout", type=_positive_float, metavar="S", help="stop after S seconds")
    results.add_argument("--jsonl", action="store_true", help="print each result as one JSON line")
    results.add_argument(
        "--completions",
        action="store_true",
        help="read the completion queue (how each job ended) instead of the result and error queues",
    )
    results.set_defaults(handler=_cmd_results)

    check = commands.add_parser(
        "check",
        help="check the settings, the broker and its queues, and the Workspace API credentials",
        description="Load the settings, connect to RabbitMQ and look at the queues, and ask the Workspace API\n"
        "for a job that does not exist (401: credentials wrong; 404: reachable and authenticated).\n"
        "Prints what is wrong; exit code 1 on any problem. Creates nothing unless --declare.",
        epilog="settings (environment):\n"
        "  SNAPWORKER_AMQP_URL, SNAPWORKER_*_QUEUE   broker and queues (see snapworker results --help)\n"
        "  SNAPWORKER_API_URL or SNAPWORKER_REGION   Workspace endpoint\n"
        "  SNAPWORKER_AUTH_TOKEN                     IAM token, or SNAPWORKER_ACCESS_KEY + SNAPWORKER_SECRET_KEY\n"
        "  SNAPWORKER_CONNECT_TIMEOUT_S, SNAPWORKER_READ_TIMEOUT_S   how long to wait for the API\n"
        "\nexample: snapworker check --project 0a1b2c3d4e5f67890a1b2c3d4e5f6789",
        formatter_class=raw,
    )
    check.add_argument("--project", metavar="P", help="project ID to test access with (default: a placeholder)")
    check.add_argument("--declare", action="store_true", help="declare the queues first, as the worker does")
    check.set_defaults(handler=_cmd_check)


def _add_queue_parsers(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    replay = commands.add_parser(
        "replay",
        help="move dead letters back to the request queue (after the cause is fixed)",
        description="Move the dead letters that match the filter (all of them without one) back to the request\n"
        "queue: each is copied there without its x-snapworker-reason header and with x-snapworker-replayed,\n"
        "confirmed, and only then removed. The others stay where they were. One pass over what the queue\n"
        "holds when it starts; prints a line per message moved and a summary. Exit code 1 on a broker problem.",
        epilog=_BROKER_HELP
        + "  SNAPWORKER_DEAD_LETTER_QUEUE  where invalid requests go (default snapworker.dead-letter)\n"
        "\nexamples:\n"
        "  snapworker replay --dry-run\n"
        "  snapworker replay --reason-contains INTERNAL --limit 100\n"
        "  snapworker replay --project 0a1b2c3d4e5f67890a1b2c3d4e5f6789",
        formatter_class=raw,
    )
    replay.add_argument("--reason-contains", metavar="TEXT", help="only those whose reason contains TEXT (any case)")
    replay.add_argument("--project", metavar="P", help="only requests for project P")
    replay.add_argument("--limit", type=_positive_int, metavar="N", help="move at most N")
    replay.add_argument("--dry-run", action="store_true", help="print what would move; move nothing")
    replay.set_defaults(handler=_cmd_replay)

    top = commands.add_parser(
        "top",
        help="watch the queues and the workers live in the terminal",
        description="Show every snapworker queue (ready and, with --management, unacknowledged messages,\n"
        "consumers, rate) and, with --metrics, each worker's held requests, batches in flight, throughput,\n"
        "desktops per API call, rate and whether it is throttled; redraw every --interval seconds until\n"
        "Ctrl-C (one frame after another when the output is not a terminal). Reads only: passive declares,\n"
        "GET /metrics and the management API. A lost broker is shown and reconnected to. Exit code 1 when\n"
        "the broker refuses the login or vhost at the start, or cannot be reached in the last frame of\n"
        "--once/--frames. See docs/top.md.",
        epilog=_BROKER_HELP + "  SNAPWORKER_PARTITIONS          partition queues are shown too\n"
        "\nexamples:\n"
        "  snapworker top --metrics http://worker-1:9108 --metrics http://worker-2:9108\n"
        "  snapworker top --management http://rabbitmq:15672 --frames 3 > frames.txt\n"
        "  snapworker top --once",
        formatter_class=raw,
    )
    top.add_argument("--metrics", action="append", metavar="URL", help="a worker's metrics URL (repeatable)")
    top.add_argument("--interval", type=_positive_float, default=2.0, metavar="S", help="seconds between frames (2)")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.add_argument("--frames", type=_positive_int, metavar="N", help="print N frames and exit")
    top.add_argument(
        "--management", metavar="URL", help="RabbitMQ's management API (http://host:15672) for unacked counts"
    )
    top.set_defaults(handler=_cmd_top)


def _describe_os_error(exc: OSError) -> str:
    if exc.filename is not None and exc.strerror:
        return f"{exc.strerror}: {exc.filename}"
    return str(exc)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a failure ends as one line on stderr (a JSON line with LOG_FORMAT=json) and an exit code."""
    args = _parser().parse_args(argv)
    from snapworker.ops.logs import configure_bootstrap_logging
    from snapworker.settings import log_format_from_environment

    # before any setting is read: load_settings' warnings and the fatal line below come in the format asked for
    json_lines = log_format_from_environment() == "json"
    configure_bootstrap_logging("json" if json_lines else "console")

    def fatal(line: str, code: int) -> int:
        if json_lines:
            logging.getLogger("snapworker.cli").error("%s", line, extra={"exit_code": code})
        else:
            print(line, file=sys.stderr)
        return code

    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        return fatal(f"snapworker: {exc}", 2)
    except BrokerRefused as exc:  # a wrong broker password or vhost: retrying cannot help
        return fatal(f"snapworker: {exc}", 3)
    except SnapworkerError as exc:  # e.g. the demo's broker is unreachable: the message says it all
        return fatal(f"snapworker {args.command}: {exc}", 1)
    except OSError as exc:  # a path or port the user gave cannot be used: theirs to fix, no traceback
        return fatal(f"snapworker {args.command}: {_describe_os_error(exc)}", 2)
    except KeyboardInterrupt:
        return 130
    except Exception:
        if not json_lines:
            raise  # a bug: Python's traceback is the most useful report
        logging.getLogger("snapworker.cli").exception("snapworker %s failed unexpectedly", args.command)
        return 1
    return code
