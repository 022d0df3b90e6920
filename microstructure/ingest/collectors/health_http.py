"""Health and counters of a running collector over HTTP, for probes and Prometheus.

    GET /health    JSON: per stream messages, malformed, reconnects and seconds since the last
                   message; writer counters (rows, batches, spill files and space, commit latency,
                   seconds since the last commit); event counts. 200 when all is well, else 503
                   with the reasons in `problems`:
                   - a stream silent for `stale_after` seconds;
                   - batches waiting while none has committed for `commit_after` seconds (the
                     database stopped or frozen);
                   - batches waiting in spill files;
                   - the spill folder nearly full (`spill_full_at` of its size limit or of its
                     filesystem), or full.
    GET /metrics   the same counters in Prometheus' text format, plus the features lag (now minus
                   the end of the newest materialised 1m bar) and the export lag (now minus the end
                   of the newest hour a Parquet export wrote), read from the database every few
                   seconds (`watch_lags`).

Started by `collect all --health-port N` on 127.0.0.1 (a setting: `host`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from microstructure.ingest.health import EventLog, Health, now_ms
from microstructure.waiting import sleep_or_stop


@dataclass
class HealthServer:
    health: Health
    writer: Any = None
    events: EventLog | None = None
    stale_after: float = 60.0
    commit_after: float = 15.0
    spill_full_at: float = 0.9
    started_ms: int = field(default_factory=now_ms)
    port: int = 0
    lags: dict[str, float | None] = field(default_factory=dict)  # name -> seconds (None: nothing yet)
    _runner: web.AppRunner | None = None

    async def watch_lags(self, dsn: str, stop: Any, every: float = 5.0) -> None:
        """Refresh `lags` from the database until `stop` is set; a failed read keeps the last values."""
        import asyncpg

        from microstructure.db.queries import load

        queries = (("features_lag_seconds", load("lag_features")), ("export_lag_seconds", load("lag_export")))
        conn: asyncpg.Connection | None = None  # one connection for the run, opened again after a failure
        try:
            while not stop.is_set():
                try:
                    if conn is None or conn.is_closed():
                        conn = await asyncpg.connect(dsn, timeout=5)
                    now = time.time()
                    for name, sql in queries:
                        t = await conn.fetchval(sql, timeout=5)
                        self.lags[name] = None if t is None else round(max(0.0, now - t.timestamp()), 1)
                except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    if conn is not None:
                        conn.terminate()
                    conn = None
                await sleep_or_stop(stop, every)
        finally:
            if conn is not None:
                conn.terminate()

    def snapshot(self) -> tuple[bool, dict[str, Any]]:
        now = now_ms()
        uptime = (now - self.started_ms) / 1000
        problems: list[str] = []
        streams: dict[str, Any] = {}
        for name, s in sorted(self.health.streams.items()):
            silent = (now - s.last_recv_ms) / 1000 if s.last_recv_ms else None
            streams[name] = {**vars(s), "seconds_since_last_message": silent}
            if (silent is None and uptime > self.stale_after) or (
                silent is not None and silent > self.stale_after
            ):
                problems.append(f"{name}: no message for {silent or uptime:.0f} s")
        writer: dict[str, Any] = {}
        if self.writer is not None:
            w = self.writer
            writer = {**w.stats.as_dict(), "queue_depth": w.queue_depth}
            last_commit = w.stats.last_commit_unix
            since_commit = time.time() - last_commit if last_commit else uptime
            writer["seconds_since_last_commit"] = round(since_commit, 1)
            writer["database_down"] = bool(getattr(w, "down", False))
            spilled = getattr(w, "spill_files", 0)
            writer["spill_files"] = spilled
            space = w.spill_space() if hasattr(w, "spill_space") else {}
            writer.update({k: v for k, v in space.items() if v is not None})
            waiting = not getattr(w, "idle", True)
            if waiting and since_commit > self.commit_after:
                problems.append(
                    f"writer: no batch committed for {since_commit:.0f} s while {w.queue_depth + 1} batches "
                    "wait (database unreachable or frozen?)"
                )
            if spilled:
                problems.append(f"writer: {spilled} batches wait in spill files (database unreachable?)")
            problems += self._spill_problems(space)
        body = {
            "status": "ok" if not problems else "degraded",
            "problems": problems,
            "uptime_s": round(uptime, 1),
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "streams": streams,
            "counters": dict(self.health.counters),
            "writer": writer,
            "events": dict(self.events.counts) if self.events is not None else {},
            "lags": dict(self.lags),
        }
        return not problems, body

    def _spill_problems(self, space: dict[str, Any]) -> list[str]:
        mb = 1 << 20
        if space.get("spill_full"):
            return ["writer: the spill folder is full: batches are dropped while the database is away"]
        limit, used = space.get("max_spill_bytes"), int(space.get("spill_bytes") or 0)
        if limit and used >= self.spill_full_at * limit:
            return [f"writer: spill files use {used / mb:.1f} of their {limit / mb:.1f} MB limit"]
        total, free = space.get("fs_total_bytes"), space.get("fs_free_bytes")
        if total and free is not None and free <= (1 - self.spill_full_at) * total:
            return [
                f"writer: the spill folder's filesystem is nearly full: {free / mb:.1f} MB free of {total / mb:.1f} MB"
            ]
        return []

    def metrics(self) -> str:
        _, body = self.snapshot()
        lines = [
            "# TYPE microstructure_up gauge",
            f"microstructure_up {1 if body['status'] == 'ok' else 0}",
        ]
        for key in ("messages", "malformed", "reconnects", "stale_reconnects"):
            lines.append(f"# TYPE microstructure_stream_{key}_total counter")
            lines += [
                f'microstructure_stream_{key}_total{{stream="{name}"}} {s[key]}'
                for name, s in body["streams"].items()
            ]
        for key, value in body["writer"].items():
            if isinstance(value, int | float) and value is not None:
                gauges = (
                    "queue_depth",
                    "spill_files",
                    "seconds_since_last_commit",
                    "database_down",
                    "spill_full",
                )
                kind = "gauge" if key in gauges or "latency" in key or "bytes" in key else "counter"
                value = int(value) if isinstance(value, bool) else value
                name = f"microstructure_writer_{key}" + ("_total" if kind == "counter" else "")
                lines += [f"# TYPE {name} {kind}", f"{name} {value}"]
        for name, value in body["lags"].items():
            if value is not None:
                lines += [f"# TYPE microstructure_{name} gauge", f"microstructure_{name} {value}"]
        if body["events"]:
            lines.append("# TYPE microstructure_events_total counter")
            lines += [
                f'microstructure_events_total{{kind="{k}"}} {v}' for k, v in sorted(body["events"].items())
            ]
        return "\n".join(lines) + "\n"

    async def _health(self, request: web.Request) -> web.Response:
        ok, body = self.snapshot()
        return web.json_response(body, status=200 if ok else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.metrics(), content_type="text/plain")

    async def start(self, port: int, host: str = "127.0.0.1") -> int:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
