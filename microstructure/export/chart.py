"""`microstructure plot`: one figure of stacked panels over a symbol's feature bars, shared time axis.

Panels: close with vwap; cvd; book imbalance at 5/10/20 levels; spread in bps; funding rate with open
interest; liquidations by side, marked as sampled (the exchange publishes at most one per symbol
per second, so they are lower bounds). matplotlib is an optional extra: `pip install
microstructure[plot]` (the demo installs it).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd


class ChartError(RuntimeError):
    """The chart cannot be drawn (no bars, matplotlib missing); one line."""


def plot_features(bars: pd.DataFrame, symbol: str, timeframe: str, out: Path) -> Path:
    """Draw `bars` (pull_features of one symbol) into `out` (PNG, written atomically)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ChartError("plot needs matplotlib: pip install 'microstructure[plot]'") from None
    if bars.empty:
        raise ChartError(f"no {timeframe} bars for {symbol} in that range")
    b = bars.droplevel("symbol") if isinstance(bars.index, pd.MultiIndex) else bars
    t = b.index
    fig, ax = plt.subplots(6, 1, sharex=True, figsize=(13, 14), height_ratios=[3, 1.4, 1.4, 1.2, 1.4, 1.2])
    fig.suptitle(
        f"{symbol} {timeframe} microstructure features ({t.min():%Y-%m-%d %H:%M} .. {t.max():%Y-%m-%d %H:%M} UTC)"
    )
    ax[0].plot(t, b["close"], lw=1.0, label="close")
    ax[0].plot(t, b["vwap"], lw=0.8, alpha=0.8, label="vwap")
    ax[0].set_ylabel("price")
    ax[0].legend(loc="upper left", fontsize=8)
    ax[1].plot(t, b["cvd"], lw=0.9, color="tab:purple")
    ax[1].axhline(0, color="grey", lw=0.5)
    ax[1].set_ylabel("cvd (from 00:00)")
    for n, c in ((5, "tab:blue"), (10, "tab:orange"), (20, "tab:green")):
        ax[2].plot(t, b[f"imbalance_{n}"], lw=0.8, color=c, label=f"top {n}")
    ax[2].axhline(0, color="grey", lw=0.5)
    ax[2].set_ylabel("book imbalance")
    ax[2].legend(loc="upper left", fontsize=8, ncol=3)
    ax[3].plot(t, b["spread_bps_avg"], lw=0.8, color="tab:red")
    ax[3].set_ylabel("spread (bps)")
    ax[4].plot(t, b["funding_rate"] * 100, lw=0.9, color="tab:brown", label="funding rate (%)")
    ax[4].set_ylabel("funding (%)")
    oi = ax[4].twinx()
    oi.plot(t, b["open_interest"], lw=0.9, color="tab:cyan", label="open interest")
    oi.set_ylabel("open interest")
    ax[4].legend(loc="upper left", fontsize=8)
    oi.legend(loc="upper right", fontsize=8)
    width = (t[1] - t[0]) if len(t) > 1 else pd.Timedelta(minutes=1)
    ax[5].bar(t, b["liq_long_vol"].fillna(0), width=width, color="tab:red", label="longs liquidated (SELL)")
    ax[5].bar(
        t, -b["liq_short_vol"].fillna(0), width=width, color="tab:green", label="shorts liquidated (BUY)"
    )
    ax[5].set_ylabel("liquidations")
    ax[5].set_title("liquidations: sampled by the exchange (at most 1 per symbol per second), lower bounds",
                    fontsize=8, loc="left")  # fmt: skip
    ax[5].legend(loc="upper left", fontsize=8)
    for a in ax:
        a.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    tmp.replace(out)
    return out
