"""``snapworker top``: a live terminal view of the queues and of the workers' metrics.

Each frame shows every queue's ready messages and consumers (passive declares: nothing is created or
consumed), its unacknowledged messages when ``--management URL`` names RabbitMQ's management API, and, for
each ``--metrics URL``, the requests that worker holds, its batches in flight, throughput, rate and whether it
is throttled (:mod:`~snapworker.tools.top_figures` gathers the figures, :mod:`~snapworker.tools.top_draw` draws
them to fit the terminal, 80 columns included). Rates are the change between two frames, so the first shows none.

The broker going away does not end the command: frames then say it is unreachable, and for how long, and the
next frames connect again. Only a refusal (wrong credentials or vhost) before the broker ever answered ends it
(one line, exit 1): no retry can fix that.

On a terminal, rich's ``Live`` redraws the frame in place until Ctrl-C; when the output is not a terminal (a
pipe, a file) frames are printed one after another. ``--once`` / ``--frames N`` stop after N frames, with exit
1 (and the reason on stderr) if the broker could not be asked for the last one.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TextIO

import aiohttp
from rich.console import Console
from rich.live import Live

from snapworker.settings import Settings, load_settings
from snapworker.tools.top_draw import draw
from snapworker.tools.top_figures import Figures, WorkerMetrics, parse_metrics, queue_names

__all__ = ["WorkerMetrics", "parse_metrics", "queue_names", "top"]


async def _show(
    settings: Settings,
    urls: list[str],
    *,
    interval: float,
    frames: int | None,
    management: str | None,
    console: Console,
    err: TextIO,
) -> int:
    figures = Figures(settings, urls, management_url=management, interval_s=interval)
    live = Live(console=console, auto_refresh=False) if console.is_terminal and frames is None else None
    drawn = 0
    try:
        async with aiohttp.ClientSession() as session:
            while True:
                frame = await figures.frame(session)
                drawn += 1
                if live is not None:
                    live.start()  # a no-op once started
                    live.update(draw(frame, console.width), refresh=True)
                else:
                    console.print(draw(frame, console.width))
                    console.print()
                    console.file.flush()
                if frames is not None and drawn >= frames:
                    if frame.broker_problem is not None:
                        err.write(f"snapworker top: {frame.broker_problem}\n")
                        return 1
                    return 0
                await asyncio.sleep(interval)
    finally:
        if live is not None:
            live.stop()
        await figures.close()


def top(args: argparse.Namespace, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    """``snapworker top``: exit 0 at Ctrl-C or after ``--once``/``--frames``; 1 on a refusal at the start, or
    when the broker could not be asked for the last of ``--frames``; 2 for a bad argument."""
    from snapworker.tools.commands import _run  # the operator commands' shared runner: errors become one line

    for url in [*(args.metrics or ()), *([args.management] if args.management else [])]:
        if not url.startswith(("http://", "https://")):
            flag = "--management" if url == args.management else "--metrics"
            err.write(f"snapworker top: {flag} wants an http:// or https:// URL, got {url!r}\n")
            return 2
    if args.once and args.frames is not None:
        err.write("snapworker top: --once is --frames 1: give one of them\n")
        return 2
    settings = load_settings()
    console = Console(file=out)
    work = _show(
        settings,
        list(args.metrics or ()),
        interval=args.interval,
        frames=1 if args.once else args.frames,
        management=args.management,
        console=console,
        err=err,
    )
    try:
        return _run("top", work, err)
    except KeyboardInterrupt:  # Ctrl-C is how a live view ends
        return 0
