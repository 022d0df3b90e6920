"""A stream that goes silent (the exchange keeps the connection open and answers pings but sends no
data) is reconnected after --stale-timeout, the reconnect is counted and recorded, and data flows again."""

from __future__ import annotations

import asyncio
import json

from ib_helpers import exchange_config, fetch_all, make_writer, settings_for

from microstructure.exchange import LocalExchange
from microstructure.ingest.collectors.book import collect_book_live
from microstructure.ingest.health import Health


def test_silent_stream_is_reconnected_and_data_keeps_arriving(db_url, ib_cache, tmp_path) -> None:
    async def go():
        cfg = exchange_config(ib_cache, ping_interval=0.5, pong_timeout=1.0)
        cfg.faults.ws_stall_after = 4  # every connection goes silent after 4 depth20 messages (~2 s)
        async with LocalExchange(cfg) as ex:
            settings = settings_for(ex, db_url, tmp_path)
            writer = await make_writer(db_url, tmp_path / "spill")
            health = Health()
            report = await collect_book_live(
                settings,
                db_url,
                ["BTCUSDT"],
                live_seconds=9.0,
                writer=writer,
                health=health,
                stale_timeout=1.0,
            )
            await writer.close()
            return report, health

    report, health = asyncio.run(go())
    stale = sum(s.stale_reconnects for s in health.streams.values())
    assert stale >= 2
    assert report.reconnects == stale  # every reconnect here was for silence, each counted once
    events = asyncio.run(
        fetch_all(db_url, "SELECT ts, detail FROM ingest_events WHERE kind = 'reconnect' ORDER BY ts")
    )
    stale_events = [e for e in events if json.loads(e["detail"]).get("reason") == "stale"]
    assert len(stale_events) == stale
    # data after the first stale reconnect: the next connection delivered all it sends before it stalls
    rows = asyncio.run(
        fetch_all(db_url, "SELECT recv_ts, last_update_id FROM book_snapshots ORDER BY last_update_id")
    )
    after = [r for r in rows if r["recv_ts"] > stale_events[0]["ts"]]
    assert len(after) >= 4, (len(rows), len(after))
    assert len(rows) == report.rows["BTCUSDT"] and len({r["last_update_id"] for r in rows}) == len(rows)
