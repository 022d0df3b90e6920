"""A TCP proxy in front of the embedded PostgreSQL, on its own thread: the tests' way to take "the
database" away (refuse and cut connections), freeze it (hold every byte, as a stopped server
process would) or bring it back, for the collectors in this process or in a subprocess alike."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from urllib.parse import urlsplit, urlunsplit


class TcpProxy:
    def __init__(self, upstream_dsn: str) -> None:
        u = urlsplit(upstream_dsn)
        self._upstream = (u.hostname or "127.0.0.1", u.port or 5432)
        self._dsn_parts = u
        self.mode = "up"  # up | down | frozen
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._thaw = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._ready = threading.Event()

    @property
    def dsn(self) -> str:
        u = self._dsn_parts
        netloc = u.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.port}"
        return urlunsplit(
            (u.scheme, f"{netloc[0]}@{host}" if len(netloc) == 2 else host, u.path, u.query, "")
        )

    def dsn_for(self, dbname: str) -> str:
        return self.dsn.rsplit("/", 1)[0] + "/" + dbname

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._server = self.loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._thaw.set()
        self._ready.set()
        self.loop.run_forever()

    def __enter__(self) -> TcpProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self._shutdown)
        self._thread.join(10)

    def _shutdown(self) -> None:
        self._cut()
        if self._server is not None:
            self._server.close()
        self._thaw.set()
        self.loop.stop()

    def _cut(self) -> None:
        for w in list(self._writers):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._writers.clear()

    def set(self, mode: str) -> None:
        """up: forward; down: refuse new connections and cut the open ones; frozen: hold every byte."""

        def apply() -> None:
            self.mode = mode
            if mode == "down":
                self._cut()
            if mode == "frozen":
                self._thaw.clear()
            else:
                self._thaw.set()

        self.loop.call_soon_threadsafe(apply)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "down":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while True:
                    data = await src.read(65536)
                    if not data:
                        break
                    await self._thaw.wait()
                    if self.mode == "down":
                        break
                    dst.write(data)
                    await dst.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers -= {writer, up_writer}
