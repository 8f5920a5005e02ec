"""Options of ``snapworker simulate``; :func:`snapworker.simulator.app.run` serves them."""

from __future__ import annotations

import argparse

from snapworker.simulator.state import SimConfig

__all__ = ["HelpFormatter", "add_arguments", "config_from_args"]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's default in its help, except the defaults that say nothing (unset, none, off)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or action.default == [] or action.required:
            return action.help
        return super()._get_help_string(action)


def _ratio(text: str) -> float:
    """A share of calls: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"a share of calls, from 0 to 1 (0.05 is 5 %), got {text}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value >= 0.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"seconds, 0 or more, got {text}")
    return value


def _whole(text: str, *, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be at least {least}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _whole(text, least=1)


def _count(text: str) -> int:
    return _whole(text, least=0)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``snapworker simulate``; ratios are checked to lie in [0, 1], durations to be 0 or more."""
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on")
    add("--port", type=_count, required=True, help="port to listen on, 0 for any free one")
    add("--token", action="append", default=[], help="accepted X-Auth-Token (repeatable)")
    add("--access-key", action="append", default=[], metavar="AK", help="accepted AK (repeatable, with --secret-key)")
    add("--secret-key", action="append", default=[], metavar="SK", help="SK of the matching --access-key")
    add("--allow-anonymous", action="store_true", help="accept requests without credentials (implied if none given)")
    add("--rate-per-minute", type=_positive_int, metavar="N", help="batch-create calls per user per minute")
    add("--rate-per-second", type=_positive_int, metavar="N", help="batch-create calls per user per second")
    add("--send-retry-after", action="store_true", help="add Retry-After to 429 answers")
    add("--error-5xx-ratio", type=_ratio, default=0.0, metavar="R", help="share of calls answered 5xx")
    add("--html-error-ratio", type=_ratio, default=0.0, metavar="R", help="share answered 502 text/html")
    add("--latency-s", type=_seconds, default=0.0, metavar="S", help="delay before every answer")
    add("--error-429-ratio", type=_ratio, default=0.0, metavar="R", help="share of admitted calls answered 429")
    add("--latency-jitter-s", type=_seconds, default=0.0, metavar="S", help="random extra delay, up to this")
    add("--stall-ratio", type=_ratio, default=0.0, metavar="R", help="share of calls answered --stall-s later")
    add("--stall-s", type=_seconds, default=0.0, metavar="S", help="how much later a stalled call is answered")
    add(
        "--drop-after-create-ratio",
        type=_ratio,
        default=0.0,
        metavar="R",
        help="share of calls that create their job, then close the connection without answering",
    )
    add("--unknown-desktop", action="append", default=[], metavar="D", help="desktop ID answered 404")
    add("--busy-desktop", action="append", default=[], metavar="D", help="desktop ID answered 409")
    add("--busy-for-s", type=_seconds, metavar="S", help="a busy desktop is free this long after its first 409")
    add("--unnamed-culprits", action="store_true", help="404/409 answers do not name the desktop at fault")
    add("--failing-desktop", action="append", default=[], metavar="D", help="desktop ID whose sub-job fails")
    add("--job-duration-s", type=_seconds, default=0.0, metavar="S", help="seconds a job stays RUNNING")
    add("--sub-jobs-inline", type=_count, metavar="N", help="sub-jobs a job's GET lists (rest: pages)")
    add("--seed", type=int, default=0, help="seed of the fault injection")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """The SimConfig the options describe; ValueError if AKs and SKs do not pair up."""
    if len(args.access_key) != len(args.secret_key):
        raise ValueError("give one --secret-key per --access-key")
    credentials = dict(zip(args.access_key, args.secret_key, strict=True))
    return SimConfig(
        tokens=frozenset(args.token),
        credentials=credentials,
        allow_anonymous=args.allow_anonymous or not (args.token or credentials),
        rate_per_minute=args.rate_per_minute,
        rate_per_second=args.rate_per_second,
        send_retry_after=args.send_retry_after,
        error_5xx_ratio=args.error_5xx_ratio,
        html_error_ratio=args.html_error_ratio,
        latency_s=args.latency_s,
        error_429_ratio=args.error_429_ratio,
        latency_jitter_s=args.latency_jitter_s,
        stall_ratio=args.stall_ratio,
        stall_s=args.stall_s,
        drop_after_create_ratio=args.drop_after_create_ratio,
        unknown_desktops=frozenset(args.unknown_desktop),
        busy_desktops=frozenset(args.busy_desktop),
        busy_for_s=args.busy_for_s,
        name_culprits=not args.unnamed_culprits,
        failing_desktops=frozenset(args.failing_desktop),
        job_duration_s=args.job_duration_s,
        sub_jobs_inline=args.sub_jobs_inline,
        seed=args.seed,
    )
