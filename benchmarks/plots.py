"""PNG figures of a benchmark report: throughput against batch size per backend, latency distribution,
and scaling in clips. Each figure is written only when its data exist; matplotlib runs headless (Agg)."""

from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def throughput_vs_batch(results: dict, out: Path) -> Path | None:
    """One panel per model: model-only clips/s against batch size, one line per backend row."""
    models = [(n, m) for n, m in results.get("models", {}).items() if m.get("rows")]
    if not models:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.8), squeeze=False)
    for ax, (name, model) in zip(axes[0], models):
        for row in model["rows"]:
            points = sorted((int(b), v["clips_per_s"]) for b, v in row.get("latency", {}).items()
                            if v.get("clips_per_s"))
            if row["name"] == "reference":
                ax.axhline(row["e2e_clips_per_s"], color="grey", ls="--", label="reference (end to end)")
            elif points:
                ax.plot(*zip(*points), marker="o", label=row["name"])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("batch size")
        ax.set_ylabel("clips/s (model only)")
        ax.legend(fontsize=7)
    return _save(plt, fig, out / "throughput_vs_batch.png")


def latency_distribution(results: dict, out: Path) -> Path | None:
    """p50 / p95 / p99 per-batch latency of every row at each batch size (grouped bars, log scale)."""
    bars = []
    for name, model in results.get("models", {}).items():
        for row in model.get("rows", []):
            for batch, lat in sorted(row.get("latency", {}).items(), key=lambda kv: int(kv[0])):
                if lat.get("p50_ms") is not None:
                    bars.append((f"{name}\n{row['name']} b{batch}", lat["p50_ms"], lat["p95_ms"], lat["p99_ms"]))
    if not bars:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(bars)), 4.5))
    x = range(len(bars))
    for offset, (index, label) in zip((-0.27, 0, 0.27), ((1, "p50"), (2, "p95"), (3, "p99"))):
        ax.bar([i + offset for i in x], [b[index] for b in bars], width=0.27, label=label)
    ax.set_xticks(list(x))
    ax.set_xticklabels([b[0] for b in bars], rotation=90, fontsize=6)
    ax.set_yscale("log")
    ax.set_ylabel("latency per batch (ms)")
    ax.legend()
    return _save(plt, fig, out / "latency.png")


def scaling_plot(results: dict, out: Path) -> Path | None:
    """End-to-end seconds and peak RSS against the number of clips (log-log for time)."""
    points = results.get("scaling", {}).get("points", [])
    if not points:
        return None
    plt = _pyplot()
    clips = [p["clips"] for p in points]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    left.plot(clips, [p["seconds"] for p in points], marker="o", label="measured")
    per_clip = points[0]["seconds"] / points[0]["clips"]
    left.plot(clips, [c * per_clip for c in clips], ls="--", color="grey", label="linear from the first point")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("clips")
    left.set_ylabel("end-to-end seconds")
    left.legend(fontsize=7)
    right.plot(clips, [p["peak_rss_mb"] for p in points], marker="o")
    right.set_xscale("log")
    right.set_ylim(0, max(p["peak_rss_mb"] for p in points) * 1.3)
    right.set_xlabel("clips")
    right.set_ylabel("peak RSS (MB)")
    return _save(plt, fig, out / "scaling.png")


def write_all(results: dict, out: Path) -> list[str]:
    """Every figure whose data exist; returns their file names (a failing figure is skipped, named)."""
    names = []
    for make in (throughput_vs_batch, latency_distribution, scaling_plot):
        try:
            path = make(results, Path(out))
        except Exception as exc:  # a figure must not lose the report
            names.append(f"{make.__name__} failed: {exc!r}")
            continue
        if path is not None:
            names.append(path.name)
    return names
