"""Options of ``snapworker simulate``; :func:`snapworker.simulator.app.run` serves them."""

from __future__ import annotations

import argparse

from snapworker.simulator.state import SimConfig

__all__ = ["add_arguments", "config_from_args"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``snapworker simulate``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, required=True, help="port to listen on, 0 for any free one")
    parser.add_argument("--token", action="append", default=[], help="accepted X-Auth-Token (repeatable)")
    parser.add_argument("--access-key", action="append", default=[], help="accepted AK (repeatable, with --secret-key)")
    parser.add_argument("--secret-key", action="append", default=[], help="SK of the matching --access-key")
    parser.add_argument(
        "--allow-anonymous", action="store_true", help="accept requests without credentials (implied if none given)"
    )
    parser.add_argument("--rate-per-minute", type=int, default=None, help="batch-create calls per user per minute")
    parser.add_argument("--rate-per-second", type=int, default=None, help="batch-create calls per user per second")
    parser.add_argument("--send-retry-after", action="store_true", help="add Retry-After to 429 answers")
    parser.add_argument("--error-5xx-ratio", type=float, default=0.0, help="share of calls answered 5xx")
    parser.add_argument("--html-error-ratio", type=float, default=0.0, help="share answered 502 text/html")
    parser.add_argument("--latency-s", type=float, default=0.0, help="delay before every answer")
    parser.add_argument("--error-429-ratio", type=float, default=0.0, help="share of admitted calls answered 429")
    parser.add_argument("--latency-jitter-s", type=float, default=0.0, help="random extra delay, up to this")
    parser.add_argument("--stall-ratio", type=float, default=0.0, help="share of calls answered --stall-s later")
    parser.add_argument("--stall-s", type=float, default=0.0, help="how much later a stalled call is answered")
    parser.add_argument(
        "--drop-after-create-ratio",
        type=float,
        default=0.0,
        help="share of calls that create their job, then close the connection without answering",
    )
    parser.add_argument("--unknown-desktop", action="append", default=[], help="desktop ID answered 404")
    parser.add_argument("--busy-desktop", action="append", default=[], help="desktop ID answered 409")
    parser.add_argument(
        "--busy-for-s", type=float, default=None, help="a busy desktop is free this long after its first 409"
    )
    parser.add_argument(
        "--unnamed-culprits", action="store_true", help="404/409 answers do not name the desktop at fault"
    )
    parser.add_argument("--failing-desktop", action="append", default=[], help="desktop ID whose sub-job fails")
    parser.add_argument("--job-duration-s", type=float, default=0.0, help="seconds a job stays RUNNING")
    parser.add_argument("--sub-jobs-inline", type=int, default=None, help="sub-jobs a job's GET lists (rest: pages)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault injection")


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
