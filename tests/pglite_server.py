"""Start PGlite with TimescaleDB (community module) on a free loopback port, for tests.

PGlite is one Postgres session: pglite-socket 0.0.19 serves one client connection at a time and
queues the others (up to --queue-timeout-ms), so clients must close a connection before they
expect the next to proceed. Its wire protocol has no COPY. No background workers: policies exist
but never run, so tests call refresh_continuous_aggregate themselves.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent / "pglite"


class PGliteError(RuntimeError):
    pass


def node_available() -> tuple[bool, str]:
    """(True, "") when node and npm are on PATH; else (False, why)."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            return False, f"{tool} not found on PATH"
    try:
        out = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"node does not run: {exc}"
    major = int(out.lstrip("v").split(".")[0] or 0) if out.startswith("v") else 0
    if major < 18:
        return False, f"Node.js >= 18 is needed, found {out or 'unknown'}"
    return True, ""


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for any server a test starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_node_modules() -> None:
    if (HERE / "node_modules" / "@unni-craftsman" / "pglite").exists():
        return
    proc = subprocess.run(
        ["npm", "ci", "--no-audit", "--no-fund", "--silent"],
        cwd=HERE,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise PGliteError(f"npm ci in {HERE} failed: {proc.stderr.strip()[-2000:]}")


class PGliteServer:
    """`with PGliteServer() as dsn:` or `start()` / `stop()`."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[str] | None = None
        self._stderr: list[str] = []

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres:postgres@127.0.0.1:{self.port}/postgres?sslmode=disable"

    def start(self, timeout: float = 90) -> str:
        ensure_node_modules()
        self.proc = subprocess.Popen(
            ["node", "server.mjs", "--port", str(self.port)],
            cwd=HERE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if line.startswith("READY"):
                return self.dsn
            if not line and self.proc.poll() is not None:
                break
        self.stop()
        raise PGliteError(
            f"PGlite server did not start (exit {self.proc.returncode}): {''.join(self._stderr)[-2000:]}"
        )

    def _drain_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
