"""The report of ``deramos-rt compare``: plots (matplotlib, Agg), one self-contained HTML file, markdown.

Everything here reads the ``results`` dict of :func:`deramos_rt.compare.compare`; no statistic is computed
here. matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path
from urllib.parse import quote

from deramos_rt.compare import NO_DIFFERENCE

_COLORS = {"gt": "#2e7d32", "lt": "#c62828", "none": "#bdbdbd", "na": "#ffffff"}
PLOT_MAX_SYSTEMS = 40  # beyond this a pair matrix is unreadable (and its figure huge); ranks show the top


def _fmt(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ci(entry: dict) -> str:
    if entry.get("ci_low") is None:
        return "-"
    return f"[{entry['ci_low']:.3f}, {entry['ci_high']:.3f}]"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    _pyplot().close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _ranked(results: dict, metric: str) -> list[str]:
    systems = results["systems"]
    scored = [n for n in systems if systems[n][metric]["mean"] is not None]
    return sorted(scored, key=lambda n: -systems[n][metric]["mean"])


def _errbar(entry: dict) -> tuple[float, float]:
    if entry["ci_low"] is None:
        return 0.0, 0.0
    return max(entry["mean"] - entry["ci_low"], 0.0), max(entry["ci_high"] - entry["mean"], 0.0)


def plot_systems(results: dict) -> str | None:
    """Means with 95 % intervals, one panel per metric, best at the top."""
    metrics = results["inputs"]["metrics"]
    if not any(_ranked(results, m) for m in metrics):
        return None
    plt = _pyplot()
    n = len(results["systems"])
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 0.38 * n + 1.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        names = _ranked(results, metric)[::-1]
        entries = [results["systems"][name][metric] for name in names]
        errors = list(zip(*[_errbar(e) for e in entries])) if entries else [[], []]
        ax.errorbar([e["mean"] for e in entries], range(len(names)), xerr=errors, fmt="o", capsize=3)
        ax.set_yticks(range(len(names)), names)
        ax.set_xlabel(f"mean {metric.upper()} (95 % CI)")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle("Systems")
    return _png(fig)


def plot_plane(results: dict) -> str | None:
    """The MI-TA plane: one point per system with its interval cross."""
    if results["inputs"]["metrics"] != ["mi", "ta"]:
        return None
    names = [n for n, s in results["systems"].items() if s["mi"]["mean"] is not None
             and s["ta"]["mean"] is not None]
    if not names:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    for name in names:
        mi, ta = results["systems"][name]["mi"], results["systems"][name]["ta"]
        ax.errorbar(mi["mean"], ta["mean"], xerr=[[_errbar(mi)[0]], [_errbar(mi)[1]]],
                    yerr=[[_errbar(ta)[0]], [_errbar(ta)[1]]], fmt="o", capsize=2, alpha=0.8)
        ax.annotate(name, (mi["mean"], ta["mean"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("mean MI")
    ax.set_ylabel("mean TA")
    ax.set_title("MI-TA plane (95 % CI crosses)")
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_matrix(results: dict, metric: str) -> str | None:
    """Pairwise verdicts: green where the row system is better, red where worse, grey no difference."""
    pairs = results["pairs"].get(metric) or []
    if not pairs:
        return None
    names = _ranked(results, metric)
    if len(names) > PLOT_MAX_SYSTEMS:
        return None
    plt = _pyplot()
    from matplotlib.colors import to_rgb

    index = {n: i for i, n in enumerate(names)}
    grid = [[to_rgb(_COLORS["na"])] * len(names) for _ in names]
    fig, ax = plt.subplots(figsize=(0.55 * len(names) + 2.5, 0.55 * len(names) + 2))
    for pair in pairs:
        i, j = index[pair["a"]], index[pair["b"]]
        better = {f"{pair['a']} > {pair['b']}": (i, j), f"{pair['b']} > {pair['a']}": (j, i)}.get(pair["verdict"])
        if better is None:
            grid[i][j] = grid[j][i] = to_rgb(_COLORS["none"])
        else:
            grid[better[0]][better[1]] = to_rgb(_COLORS["gt"])
            grid[better[1]][better[0]] = to_rgb(_COLORS["lt"])
        for r, c, sign in ((i, j, 1), (j, i, -1)):
            ax.text(c, r, f"{sign * pair['diff']:+.2f}", ha="center", va="center", fontsize=6)
    ax.imshow(grid)
    ax.set_xticks(range(len(names)), names, rotation=90)
    ax.set_yticks(range(len(names)), names)
    ax.set_title(f"{metric.upper()}: row vs column (green better, red worse, grey: no detectable "
                 "difference)", fontsize=8)
    return _png(fig)


def plot_ranks(results: dict) -> str | None:
    """Bars of each system's bootstrap probability of ranking first."""
    metrics = [m for m in results["inputs"]["metrics"] if results["ranks"].get(m)]
    if not metrics:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 3.5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        ranks = results["ranks"][metric]
        names = [n for n in _ranked(results, metric) if n in ranks]
        shown = names[:PLOT_MAX_SYSTEMS]
        ax.bar(shown, [ranks[n]["p_first"] for n in shown])
        ax.set_ylim(0, 1)
        ax.set_ylabel("P(rank 1)")
        top = f" (top {len(shown)} of {len(names)})" if len(shown) < len(names) else ""
        ax.set_title(f"{metric.upper()}: probability of ranking first{top}")
        ax.tick_params(axis="x", rotation=90)
    return _png(fig)


def plot_labels(results: dict) -> str | None:
    """Predicted against human: system means (large) over clips (small)."""
    metrics = [m for m in results["inputs"]["metrics"] if results["labels"].get(m)]
    if not metrics:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 5), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        per_system = results["labels"][metric]["per_system"]
        for name, entry in per_system.items():
            ax.scatter(entry["human"], entry["pred"], s=30)
            ax.annotate(name, (entry["human"], entry["pred"]), xytext=(3, 3), textcoords="offset points",
                        fontsize=7)
        ax.plot([1, 5], [1, 5], color="grey", lw=0.8, ls="--")
        point = results["labels"][metric]["point"]["system"]
        ax.set_title(f"{metric.upper()} per system: SRCC {_fmt(point['SRCC'])}, LCC {_fmt(point['LCC'])}")
        ax.set_xlabel("human MOS (mean)")
        ax.set_ylabel("predicted (mean)")
        ax.grid(alpha=0.3)
    return _png(fig)


# ------------------------------------------------------------------------------------------------- tables


def _system_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    metrics = results["inputs"]["metrics"]
    head = ["system", "clips", "failed", "invalid"] + [x for m in metrics for x in (f"{m.upper()} mean", "95 % CI")]
    rows = []
    for name, s in results["systems"].items():
        rows.append([name, str(s["clips"]), str(s["failed"]), str(s.get("invalid", 0))]
                    + [x for m in metrics for x in (_fmt(s[m]["mean"]), _ci(s[m]))])
    return head, rows


def _pair_rows(results: dict, metric: str) -> tuple[list[str], list[list[str]]]:
    head = ["A", "B", "mean A - B", "95 % CI", "pairing", "perm. p", "Holm p", "second opinion p", "verdict"]
    rows = []
    for p in results["pairs"].get(metric) or []:
        pairing = f"paired, {p['shared_prompts']} prompts" if p["paired"] else f"unpaired, {p['n_a']}/{p['n_b']}"
        verdict = p["verdict"] + (f" ({p['note']})" if p.get("note") else "")
        rows.append([p["a"], p["b"], f"{p['diff']:+.3f}", _ci(p), pairing, _fmt(p["p"], 4),
                     _fmt(p["p_holm"], 4), f"{_fmt(p['p_second'], 4)} ({p['second_test']})", verdict])
    return head, rows


def _rank_rows(results: dict, metric: str) -> tuple[list[str], list[list[str]]]:
    ranks = results["ranks"].get(metric) or {}
    rows = [[n, f"{ranks[n]['p_first']:.3f}", f"{ranks[n]['rank_low']}-{ranks[n]['rank_high']}"]
            for n in _ranked(results, metric) if n in ranks]
    return ["system", "P(rank 1)", "95 % rank interval"], rows


def _label_rows(results: dict) -> tuple[list[str], list[list[str]]]:
    rows = []
    for metric, entry in results["labels"].items():
        for level in ("utterance", "system"):
            cells = []
            for name in ("MSE", "LCC", "SRCC", "KTAU"):
                low, high = (entry["ci"].get(level, {}).get(name) or [None, None])
                interval = f" [{_fmt(low)}, {_fmt(high)}]" if low is not None and high is not None else ""
                cells.append(_fmt(entry["point"][level][name]) + interval)
            rows.append([metric.upper(), level] + cells)
    return ["metric", "level", "MSE", "LCC", "SRCC", "KTAU"], rows


def _md_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _html_table(head: list[str], rows: list[list[str]]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows]
    return "\n".join(out) + "</table>"


def _summary(results: dict) -> list[str]:
    i = results["inputs"]
    lines = [f"{i['clips']} clips from {i['systems']} systems; metrics {', '.join(m.upper() for m in i['metrics'])}; "
             f"{i['resamples']:,} bootstrap resamples, seed {i['seed']}.",
             f"Resampling unit: the {i['unit']} ("
             + ("systems share prompts, whose clips are not independent" if i["unit"] == "prompt"
                else "no prompt is shared between systems") + "). Intervals: 95 % bootstrap, BCa.",
             "Pairs: permutation test (paired on shared prompts when there are two or more), "
             f"Holm-corrected (the family of each metric is below), verdict at corrected p < {i['alpha']}."]
    lines += [_pair_set_line(metric, s) for metric, s in results.get("pair_sets", {}).items()]
    lines.append(f"Invalid: a score that is NaN, infinite or outside [{i['score_range'][0]:g}, "
                 f"{i['score_range'][1]:g}]; such rows are counted per system and left out of every statistic.")
    return lines


def _pair_set_line(metric: str, s: dict) -> str:
    """Which pairs of a metric were tested and what they were corrected over."""
    tested = {"all": f"all {s['tested']:,} pairs",
              "baseline": f"each system against the baseline {s['reference']} ({s['tested']:,} pairs)",
              "best": f"each system against the best, {s['reference']} ({s['tested']:,} pairs)"}.get(
        s["mode"], f"all pairs among the {s['mode']} systems and the rest against the best, {s['reference']} "
                   f"({s['tested']:,} pairs)")
    family = (f"Holm over all {s['family']:,} pairs, since these were picked from the data"
              if s["family"] > s["tested"] else "Holm over these")
    return f"{metric.upper()}: {tested}; {family}; {s['permutations']:,} permutations per test."


# ---------------------------------------------------------------------------------------------- listening


def _audio_src(path: str | None, out_dir: Path, base: Path) -> str | None:
    """A relative URL from the report folder to a clip, so the folder can move next to the clips."""
    if not path:
        return None
    target = Path(path)
    if not target.is_absolute():
        target = base / target if (base / target).exists() else Path.cwd() / target
    relative = os.path.relpath(target.resolve(), out_dir.resolve())
    return quote(Path(relative).as_posix())


def _clip_score(record: dict, metric: str) -> str:
    """``MI 3.21 (SD 0.40)``, with the ensemble members' spread when the score file has it."""
    spread = record.get(metric + "_spread")
    extra = f"; members' spread {_fmt(spread, 2)}" if spread is not None and math.isfinite(spread) else ""
    return f"{metric.upper()} {_fmt(record[metric], 2)} (SD {_fmt(record[metric + '_sd'], 2)}{extra})"


def _clip_html(record: dict, metrics: list[str], out_dir: Path, base: Path) -> str:
    scores = ", ".join(_clip_score(record, m) for m in metrics)
    human = ", ".join(f"human {m.upper()} {_fmt(record[m + '_human'], 1)}" for m in metrics
                      if record.get(m + "_human") is not None)
    src = _audio_src(record["path"], out_dir, base)
    audio = f'<audio controls preload="none" src="{html.escape(src)}"></audio>' if src else "(no audio path)"
    error = f"<br><b>error:</b> {html.escape(record['error'])}" if record["error"] else ""
    return (f"<li><code>{html.escape(record['id'])}</code> {html.escape(scores)}"
            f"{'; ' + html.escape(human) if human else ''}<br>prompt: <i>{html.escape(record['prompt'] or '-')}</i>"
            f"{error}<br>{audio}</li>")


def _listen_html(results: dict, out_dir: Path, base: Path) -> str:
    metrics = results["inputs"]["metrics"]
    ranked = ("whose ensemble members disagree most (the largest spread of their scores)"
              if results.get("uncertainty") == "spread" else
              "whose predicted distribution is widest (the model is least sure)")
    parts = [f"<h2>Clips worth listening to</h2><p>Per system: the clips {ranked} and the lowest-scored "
             "clips.</p>"]
    for name, entry in results["listen"].items():
        parts.append(f"<h3>{html.escape(name)}</h3>")
        groups = [("most uncertain", entry["uncertain"])]
        groups += [(f"lowest {m.upper()}", entry["lowest"][m]) for m in metrics]
        groups += [("failed", entry["failed"])]
        for title, records in groups:
            if records:
                items = "".join(_clip_html(r, metrics, out_dir, base) for r in records)
                parts.append(f"<h4>{title}</h4><ul>{items}</ul>")
        if not entry["uncertain"]:
            parts.append("<p>No predicted distributions in the score file: no per-clip uncertainty.</p>")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------- writing

_CSS = ("body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:0.5em 0;font-size:13px}"
        "td,th{border:1px solid #ccc;padding:2px 6px}th{background:#f0f0f0}img{max-width:100%}"
        ".note{background:#fff3cd;padding:4px 8px;margin:2px 0}li{margin:0.4em 0}")


def _html(results: dict, images: dict[str, str], out_dir: Path, base: Path) -> str:
    metrics = results["inputs"]["metrics"]
    body = ["<h1>deramos-rt compare</h1>"] + [f"<p>{html.escape(line)}</p>" for line in _summary(results)]
    body += [f'<div class="note">{html.escape(n)}</div>' for n in results["notes"]]
    body += ["<h2>Systems</h2>", _html_table(*_system_rows(results))]
    for key in ("systems", "plane"):
        if images.get(key):
            body.append(f'<img alt="{key}" src="data:image/png;base64,{images[key]}">')
    for metric in metrics:
        body += [f"<h2>{metric.upper()}: pairs</h2>", _html_table(*_pair_rows(results, metric))]
        if images.get(f"matrix_{metric}"):
            body.append(f'<img alt="matrix {metric}" src="data:image/png;base64,{images[f"matrix_{metric}"]}">')
        elif results["pairs"].get(metric):
            body.append(f"<p>(No pair matrix: it is drawn up to {PLOT_MAX_SYSTEMS} systems.)</p>")
    body.append("<h2>Ranks</h2>")
    for metric in metrics:
        body += [f"<h3>{metric.upper()}</h3>", _html_table(*_rank_rows(results, metric))]
    if images.get("ranks"):
        body.append(f'<img alt="ranks" src="data:image/png;base64,{images["ranks"]}">')
    body.append("<h2>Sample size</h2>" + "".join(f"<p>{html.escape(results['power'][m]['line'])}</p>"
                                                 for m in metrics if m in results["power"]))
    if results["labels"]:
        body += ["<h2>Against human labels</h2>", _html_table(*_label_rows(results))]
        if images.get("labels"):
            body.append(f'<img alt="labels" src="data:image/png;base64,{images["labels"]}">')
    body.append(_listen_html(results, out_dir, base))
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>deramos-rt compare</title>"
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def _markdown(results: dict) -> str:
    metrics = results["inputs"]["metrics"]
    parts = ["# deramos-rt compare", "", *_summary(results), ""]
    parts += [f"> {n}" for n in results["notes"]] + ["", "## Systems", "", _md_table(*_system_rows(results))]
    for metric in metrics:
        parts += ["", f"## {metric.upper()}: pairs", "", _md_table(*_pair_rows(results, metric)),
                  "", f"## {metric.upper()}: ranks", "", _md_table(*_rank_rows(results, metric))]
        if metric in results["power"]:
            parts += ["", results["power"][metric]["line"]]
    if results["labels"]:
        parts += ["", "## Against human labels", "", _md_table(*_label_rows(results))]
    parts += ["", f"Verdicts are 'A > B', 'B > A' or '{NO_DIFFERENCE}'. Plots and audio: report.html."]
    return "\n".join(parts) + "\n"


def write_report(results: dict, out_dir: str | Path, base: str | Path = ".") -> list[Path]:
    """Write ``report.html`` (plots embedded as base64 PNG), ``report.md`` and ``results.json``.

    Args:
        results: the dict of :func:`deramos_rt.compare.compare`.
        out_dir: the report folder (created).
        base: the folder that relative clip paths of the score file start from.

    Returns:
        The three paths written.
    """
    out_dir, base = Path(out_dir), Path(base)
    out_dir.mkdir(parents=True, exist_ok=True)
    images = {"systems": plot_systems(results), "plane": plot_plane(results), "ranks": plot_ranks(results),
              "labels": plot_labels(results)}
    for metric in results["inputs"]["metrics"]:
        images[f"matrix_{metric}"] = plot_matrix(results, metric)
    paths = [out_dir / "report.html", out_dir / "report.md", out_dir / "results.json"]
    paths[0].write_text(_html(results, images, out_dir, base), encoding="utf-8")
    paths[1].write_text(_markdown(results), encoding="utf-8")
    paths[2].write_text(json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return paths
