"""The metrics and health endpoint (aiohttp.web): ``/metrics``, ``/healthz`` and ``/readyz``.

- ``/healthz``: the event loop answers and keeps up: 503 once its timers ran more than ``max_lag_s`` late within
  the last few seconds (a blocked loop cannot answer at all; one that keeps stalling answers unhealthy).
- ``/readyz``: connected to the broker *and* the consumer attached, and every background loop running; 503 says
  which loop is down and why ("connected but not consuming" is not ready either).
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from snapworker.errors import ConfigError
from snapworker.ops.loop_lag import LoopLagMonitor

__all__ = ["HealthServer"]


class HealthServer:
    """Serves one worker's metrics and health on ``host:port``."""

    def __init__(
        self,
        registry: CollectorRegistry,
        ready: Callable[[], bool],
        *,
        host: str,
        port: int,
        lag: LoopLagMonitor | None = None,
        max_lag_s: float = 5.0,
        problems: Callable[[], dict[str, str]] = dict,
    ) -> None:
        self._registry = registry
        self._ready = ready
        self._problems = problems
        self._lag = lag or LoopLagMonitor()
        self._max_lag_s = max_lag_s
        self._host = host
        self._port = port
        self._runner: web.AppRunner | None = None
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        self._app = app

    @property
    def port(self) -> int:
        return self._port

    async def start(self) -> None:
        self._lag.start()
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        try:
            await site.start()
        except OSError as exc:  # a port in use or not ours to bind: a setting to change, not a crash
            await self.stop()
            raise ConfigError(
                f"cannot serve metrics on {self._host}:{self._port} ({exc.strerror or exc}): choose another "
                f"SNAPWORKER_METRICS_PORT"
            ) from exc
        if self._port == 0:  # tests ask for a free port: learn which one we got
            self._port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        await self._lag.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        if "application/openmetrics-text" in request.headers.get("Accept", ""):
            # OpenMetrics when the scraper asks for it (Prometheus does by default): exemplars, _created, # EOF
            body = openmetrics.generate_latest(self._registry)  # type: ignore[no-untyped-call]
            return web.Response(body=body, headers={"Content-Type": openmetrics.CONTENT_TYPE_LATEST})
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _request: web.Request) -> web.Response:
        lag_s = self._lag.lag_s
        healthy = lag_s <= self._max_lag_s
        body = {"status": "ok" if healthy else "event loop lagging", "loop_lag_ms": round(lag_s * 1000, 3)}
        return web.json_response(body, status=200 if healthy else 503)

    async def _readyz(self, _request: web.Request) -> web.Response:
        if self._ready():
            return web.json_response({"status": "ready"})
        problems = self._problems()
        if problems:  # the API refuses the credential, or a background loop is down: say which, and why
            status = "credential refused" if "credential" in problems else "background loop down"
            return web.json_response({"status": status, "problems": problems}, status=503)
        return web.json_response({"status": "not consuming"}, status=503)
