"""Draw the last scenario run's charts into bench/results/charts/ (`bench/run charts`; needs matplotlib)."""

from __future__ import annotations

import json
from typing import Any

from bench import lib
from bench.verdict import OUTCOMES, latency_ms, limiter_admitted, outcome, pcts

ACTORS = ("legit", "crawler", "bot", "spike")
PALETTE = "#2e7d32 #9e9d24 #6d4c41 #f9a825 #1565c0 #c62828 #00838f #8e24aa #000000 #616161"  # in the order of OUTCOMES
COLOURS = dict(zip(OUTCOMES, PALETTE.split(), strict=True))


def main() -> int:
    import matplotlib.pyplot as plt

    plt.switch_backend("Agg")
    results = json.loads((lib.RESULTS / "scenario.json").read_text())
    raw = json.loads((lib.RESULTS / "scenario.records.json").read_text())
    tl, fault, records = results["config"]["timeline"], results["report"]["fault"], raw["records"]
    end = int(max(r["received"] for r in records)) + 2
    series = {a: {o: [0] * end for o in (*OUTCOMES, "admitted", "not asked")} for a in ACTORS}
    for r in (r for r in records if r["actor"] in series):  # the staff's are left out
        second, by = int(r["sent"]), series[r["actor"]]
        by[outcome(r)][second] += 1
        by["admitted"][second] += limiter_admitted(r)
        by["not asked"][second] += r["status"] not in (0, 429) and not r["quota"]

    def save(fig: Any, axes: Any, title: str, name: str) -> None:
        for ax in axes:  # shaded behind the data, so that bar colours stay true
            ax.axvspan(*tl["attack"], color="#ffebee", lw=0, zorder=0)
            ax.axvspan(fault["fault_on"], fault["fault_off"], color="#f8bbd0", lw=0, zorder=0)
            ax.axvspan(*results["report"]["slowdown"], color="#bbdefb", lw=0, zorder=0)
        axes[0].set_title(f"{title}\n(light red: attack; darker: search dependency failing; blue: search crawling)")
        axes[-1].set_xlabel("seconds since start")
        fig.tight_layout()
        fig.savefig(folder / name, dpi=90)
        plt.close(fig)
        print(f"chart: {(folder / name).relative_to(lib.ROOT)}")

    (folder := lib.RESULTS / "charts").mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(len(ACTORS), 1, figsize=(11, 10), sharex=True)
    for ax, actor in zip(axes, ACTORS, strict=True):
        bottom = [0] * end
        for name in (o for o in OUTCOMES if any(series[actor][o])):
            counts = series[actor][name]
            ax.bar(range(end), counts, bottom=bottom, width=1, align="edge", color=COLOURS[name], label=name)
            bottom = [b + v for b, v in zip(bottom, counts, strict=True)]
        ax.set_ylabel(f"{actor}\nrequests / s")
        ax.set_ylim(0, max(bottom) * 1.45 + 1)  # room for the legend above the bars
        ax.legend(loc="upper right", fontsize=8, ncol=5)
    save(fig, axes, "Requests per second by outcome and actor", "scenario-outcomes.png")

    fig, ax = plt.subplots(figsize=(11, 4.5))
    legit = [r for r in records if r["actor"] == "legit"]
    bins = [(lo, [latency_ms(r) for r in legit if lo <= r["sent"] < lo + 5]) for lo in range(0, end, 5)]
    bins = [(lo + 2.5, pcts(lat, 50, 95, 99)) for lo, lat in bins]
    for q, style in ((50, "-"), (95, "--"), (99, ":")):
        ax.plot([t for t, _ in bins], [p[q] for _, p in bins], style, marker="o", ms=3, label=f"p{q}")
    limit = 2 * results["report"]["legit_p99"]["baseline_ms"]
    ax.axhline(limit, color="#c62828", ls="-.", lw=1, label=f"2 x baseline p99 ({limit:.0f} ms)")
    ax.set(yscale="log", ylabel="latency, ms (client side)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    save(fig, [ax], "Legitimate users' latency per 5 s", "scenario-latency.png")

    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(11, 8), sharex=True)
    levels = {"closed": 0, "half-open": 1, "open": 2, "forced-open": 2, "forced-closed": 0}
    ax1.step([s[1] for s in raw["samples"]], [levels.get(s[2], -1) for s in raw["samples"]], where="post")
    ax1.set(yticks=[0, 1, 2], yticklabels=["closed", "half-open", "open"], ylim=(-0.3, 2.3))
    t, connections, active, busy, stolen = zip(*results["db_samples"], strict=True)
    ax2.plot(t, connections, label="connections", color="#2e7d32")
    ax2.plot(t, active, label="active", color="#f9a825", lw=0.8)
    ax2.axhline(results["config"]["db_ceiling"], color="#c62828", ls="--", label="ceiling: workers x DB_POOL_MAX")
    ax2.set(ylabel="connections", ylim=(0, results["config"]["db_ceiling"] + 4))
    ax3.stackplot(t, busy, stolen, labels=["busy", "stolen"], colors=["#6d4c41", "#bdbdbd"], step="post")
    ax3.set(ylabel="CPU %, all cores", ylim=(0, 105))
    for ax in (ax2, ax3):
        ax.legend(loc="upper left", fontsize=8, ncol=3)
    save(fig, [ax1, ax2, ax3], "Search breaker state (every 250 ms), connections, CPU", "scenario-breaker.png")

    fig, axes = plt.subplots(3, 1, figsize=(11, 7.5), sharex=True)
    for ax, actor in zip(axes, ("crawler", "bot", "legit"), strict=True):
        for name, colour in (("admitted", "#2e7d32"), ("429", "#f9a825"), ("not asked", "#c62828")):
            ax.plot(range(end), series[actor][name], label=name, color=colour, drawstyle="steps-post")
        ax.set_ylabel(f"{actor}\nper second")
        ax.legend(loc="upper right", fontsize=8)
    title = "Rate-limiter decisions per second ('not asked': a known-open breaker's 503)"
    save(fig, axes, title, "scenario-limiter.png")
    return 0
