"""Make the figures of the docs site: `python docs/figures/make_figures.py` (writes docs/figures/).

Each metric figure runs the query of its page (docs/metrics/<metric>.md) with seeded noise
(``telemagg.testing.seeded``: reproducible pictures; never do this in a real release) and
draws the released values with their noise: error bars are +-2 noise standard deviations,
from ``release.metrics[column].stddev``. The error-vs-epsilon figure is exact: it reads the
noise scales telemagg calibrates (no sampling). tests/test_docs.py runs this script.
"""

from __future__ import annotations

import itertools
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

import telemagg as tm
from telemagg.datasets import telemetry_events
from telemagg.errors import UntrackedReleaseWarning
from telemagg.testing import seeded

HERE = Path(__file__).resolve().parent
OS = ["android", "ios", "linux", "macos", "windows"]
POLICY = tm.Policy(privacy_unit="user_id", max_partitions=1, max_contributions=5)
FIGURES: dict[str, Callable[[], Any]] = {}


def figure(name: str) -> Callable[[Callable[[], Any]], Callable[[], Any]]:
    def register(draw: Callable[[], Any]) -> Callable[[], Any]:
        FIGURES[name] = draw
        return draw

    return register


def release(metrics: list[tm.Metric], **kwargs: Any) -> tm.Release:
    """The metric pages' query: 200,000 synthetic events by `os` (public partitions)."""
    options: dict[str, Any] = {"partitions": OS, "epsilon": 1.0, **kwargs}
    return tm.aggregate(
        telemetry_events(200_000, seed=1),
        by=["os"],
        metrics=metrics,
        policy=POLICY,
        randomness=seeded(1),
        **options,
    )


def bars(column: str, metrics: list[tm.Metric], ylabel: str, title: str) -> Any:
    rel = release(metrics)
    table = rel.to_pandas()
    stddev = rel.metrics[column].stddev
    if column.startswith("mean_"):  # the noise of a mean: its sum's noise over the count
        stddev = [stddev / max(c, 1.0) for c in release([tm.count()]).to_pandas()["count"]]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(table["os"], table[column], yerr=2 * np.asarray(stddev), capsize=4, color="#5c6bc0")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return fig


@figure("count")
def count_figure() -> Any:
    return bars("count", [tm.count()], "events (noisy)", "tm.count() by os, epsilon = 1")


@figure("unit_count")
def unit_count_figure() -> Any:
    return bars("unit_count", [tm.unit_count()], "distinct users (noisy)", "tm.unit_count() by os")


@figure("sum")
def sum_figure() -> Any:
    metric = tm.sum("duration_ms", bounds=(0, 60_000))
    return bars("sum_duration_ms", [metric], "total duration (ms)", "tm.sum('duration_ms')")


@figure("mean")
def mean_figure() -> Any:
    metric = tm.mean("duration_ms", bounds=(0, 10_000))
    return bars("mean_duration_ms", [metric], "mean duration (ms)", "tm.mean('duration_ms')")


@figure("variance")
def variance_figure() -> Any:
    rel = release([tm.variance("duration_ms", bounds=(0, 10_000))])
    table = rel.to_pandas()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.bar(table["os"], np.sqrt(table["variance_duration_ms"]), color="#5c6bc0")
    ax.set_ylabel("standard deviation (ms)")
    ax.set_title("sqrt of tm.variance('duration_ms'), bounds (0, 10000)", fontsize=10)
    return fig


@figure("quantiles")
def quantiles_figure() -> Any:
    metric = tm.quantiles("latency_ms", [0.5, 0.9, 0.99], bounds=(1, 10_000), scale="log")
    table = release([metric]).to_pandas()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    x = np.arange(len(table))
    for offset, level in zip((-0.25, 0.0, 0.25), ("p50", "p90", "p99"), strict=True):
        ax.bar(x + offset, table[f"{level}_latency_ms"], width=0.25, label=level)
    ax.set_xticks(x, table["os"])
    ax.set_yscale("log")
    ax.set_ylabel("latency (ms), log scale")
    ax.legend(fontsize=8)
    ax.set_title("tm.quantiles('latency_ms', [0.5, 0.9, 0.99], scale='log')", fontsize=10)
    return fig


@figure("histogram")
def histogram_figure() -> Any:
    edges = [0, 10, 30, 100, 300, 1000, 3000, 10_000]
    rel = release([tm.histogram("latency_ms", bins=edges)])
    table = rel.to_pandas()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    labels = [f"{a:g}-{b:g}" for a, b in itertools.pairwise(edges)]
    x = np.arange(len(labels))
    for i, (os_name, counts) in enumerate(
        zip(table["os"], table["histogram_latency_ms"], strict=True)
    ):
        ax.bar(x + (i - 2) * 0.16, counts, width=0.16, label=os_name)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_xlabel("latency bucket (ms)")
    ax.set_ylabel("events (noisy)")
    ax.legend(fontsize=7)
    ax.set_title("tm.histogram('latency_ms', bins=[0, 10, ..., 10000])", fontsize=10)
    return fig


@figure("top_k")
def top_k_figure() -> Any:
    rel = release([tm.top_k("event_name", k=5)], delta=1e-6)
    table = rel.to_pandas()
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
    for ax, os_name in zip(axes, ("android", "windows"), strict=True):
        row = table[table["os"] == os_name].iloc[0]
        ax.barh(list(row["top_event_name"])[::-1], list(row["top_event_name_count"])[::-1])
        ax.set_title(f"top 5 events on {os_name}", fontsize=10)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    return fig


@figure("error_vs_epsilon")
def error_vs_epsilon_figure() -> Any:
    """Exact: the noise stddev telemagg calibrates for one count, and partition selection."""
    epsilons = np.geomspace(0.05, 10, 24)
    tiny = {"user_id": [1, 2], "k": ["a", "b"]}
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.4))
    for l0, linf in ((1, 1), (4, 2), (16, 2)):
        policy = tm.Policy(privacy_unit="user_id", max_partitions=l0, max_contributions=linf)
        for noise, style in (("laplace", "-"), ("gaussian", "--")):
            stddevs = [
                tm.aggregate(
                    tiny, by="k", metrics=[tm.count()], policy=policy, epsilon=float(eps),
                    delta=1e-6 if noise == "gaussian" else 0.0, partitions=["a", "b"],
                    noise=noise,
                ).metrics["count"].stddev
                for eps in epsilons
            ]  # fmt: skip
            left.plot(epsilons, stddevs, style, label=f"{noise}, L0={l0}, Linf={linf}")
        units = [
            tm.aggregate(
                tiny, by="k", metrics=[tm.count()], policy=policy, epsilon=float(eps),
                delta=1e-6,
            ).metadata["partitions"]["mechanism"]["units_for_half"]
            for eps in epsilons
        ]  # fmt: skip
        right.plot(epsilons, units, label=f"L0={l0}")
    for ax in (left, right):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("epsilon of the release")
        ax.grid(True, which="both", alpha=0.3)
    left.set_ylabel("noise stddev of a count")
    left.set_title("count noise (public partitions)", fontsize=10)
    left.legend(fontsize=6)
    right.set_ylabel("users for 50% release")
    right.set_title("private partition selection, delta 1e-6", fontsize=10)
    right.legend(fontsize=7)
    fig.tight_layout()
    return fig


def make_all(outdir: Path = HERE) -> list[Path]:
    """Draw every figure into ``outdir``; the paths written."""
    made = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UntrackedReleaseWarning)  # seeded: no ledger anyway
        for name, draw in FIGURES.items():
            fig = draw()
            path = outdir / f"{name}.png"
            fig.savefig(path, dpi=90, bbox_inches="tight", metadata={"Software": None})
            plt.close(fig)
            made.append(path)
    return made


if __name__ == "__main__":
    for path in make_all(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(path)
