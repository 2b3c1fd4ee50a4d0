"""Decode-only scaling: how many clips per second the decode workers alone prepare, by worker count.

``python -m benchmarks.decode_scaling [--clips 64] [--seconds 10,30] [--workers 1,2,4] [--modes threads]
[--out DIR]``

Files are 44.1 kHz stereo 16-bit FLAC written once into a temporary folder (music-like tones and noise;
``--files DIR`` keeps and reuses them). Each row times :func:`deramos_rt.pipeline.prepared_stream` over
every file in ``truncate`` mode, as the Scorer runs it, for one protocol:

* ``torchaudio`` -> 24 kHz (the paper's MuQ protocol: numpy matrix products, BLAS-bound);
* ``soxr`` -> 16 kHz (the built-in model's protocol);
* ``native``: decode only, the clip handed over at its own rate (what the workers do when the inference
  device resamples, see ``deramos_rt.device_resample``).

``--modes threads,processes`` adds the same work in a process pool (each process with single-threaded BLAS),
the alternative to threads. The target, judged per row: N workers give at least 0.8 x N times one worker's
clips/s, for N up to the machine's cores. Rows carry the 1-minute load average at the time they ran; the
JSON also records the CPU and ``threadpoolctl.threadpool_info()``. Figures from a loaded machine are upper
bounds on the cost; measure on a quiet one. :func:`decode_table` is what ``benchmarks.report`` calls.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from deramos_rt.audio import AudioProtocol
from deramos_rt.pipeline import ClipRequest, available_cores, prepare_request, prepared_stream, single_threaded_blas

# (row name, protocol rate, resampler, hand over native-rate audio)
PROTOCOLS = {"torchaudio": (24000, "torchaudio", False), "soxr": (16000, "soxr", False),
             "native": (24000, "torchaudio", True)}
TARGET_FRACTION = 0.8
RATE = 44100


def write_flac_clips(folder: Path, count: int, seconds: float, rate: int = RATE, workers: int | None = None) -> list[Path]:
    """``count`` stereo 16-bit FLAC files of ``seconds`` at ``rate`` (existing ones are kept), in parallel."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"S{i % 8:03d}_clip{i:04d}_{int(seconds)}s.flac" for i in range(count)]
    todo = [(str(p), seconds, rate, i) for i, p in enumerate(paths) if not p.is_file()]
    if todo:
        with ProcessPoolExecutor(max_workers=workers or available_cores()) as pool:
            list(pool.map(_write_flac, todo, chunksize=max(1, len(todo) // 64)))
    return paths


def _write_flac(job: tuple[str, float, int, int]) -> None:
    import soundfile as sf

    from benchmarks.resample_speed import stereo_signal

    path, seconds, rate, seed = job
    sf.write(path, stereo_signal(seconds, rate, seed=seed), rate, format="FLAC", subtype="PCM_16")


def worker_counts(cores: int | None = None) -> list[int]:
    """1, 2, 4, ... up to the cores, and the cores themselves."""
    cores = cores or available_cores()
    counts, n = [], 1
    while n < cores:
        counts.append(n)
        n *= 2
    return counts + [cores]


def judge(rows: list[dict], cores: int) -> list[dict]:
    """Speed-up over the same protocol's one-worker row and the 0.8 x N target, per row (in place)."""
    base = {(r["protocol"], r["clip_seconds"], r["mode"]): r["clips_per_s"] for r in rows if r["workers"] == 1}
    for r in rows:
        one = base.get((r["protocol"], r["clip_seconds"], r["mode"]))
        r["speedup"] = round(r["clips_per_s"] / one, 2) if one else None
        r["target_speedup"] = round(TARGET_FRACTION * r["workers"], 2)
        within = r["workers"] <= cores
        r["target_met"] = None if r["speedup"] is None or not within else r["speedup"] >= r["target_speedup"]
    return rows


def time_decode(paths: list[Path], seconds: float, protocol_name: str, workers: int, mode: str = "threads") -> float:
    """Seconds to prepare every file as ``seconds`` clips with ``workers`` decode workers (threads or processes)."""
    rate, resampler, native = PROTOCOLS[protocol_name]
    protocol = AudioProtocol(rate, seconds, resampler)
    requests = [ClipRequest(p.stem, str(p), "", "x") for p in paths]
    prepare_request(requests[0], protocol, "truncate", native)  # kernel plan and decoder start-up untimed
    if mode == "processes":
        with ProcessPoolExecutor(max_workers=workers, initializer=_limit_blas) as pool:
            list(pool.map(_prepare, [(requests[0], protocol, native)] * workers))  # processes started, untimed
            start = time.perf_counter()
            results = list(pool.map(_prepare, [(r, protocol, native) for r in requests], chunksize=2))
            elapsed = time.perf_counter() - start
    else:
        start = time.perf_counter()
        results = list(prepared_stream(requests, protocol, "truncate", workers, prefetch=4 * workers, native=native))
        elapsed = time.perf_counter() - start
    failed = [r.error for r in results if r.error]
    if failed:
        raise RuntimeError(f"decode failed: {failed[0]}")
    return elapsed


def _limit_blas() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def _prepare(job):
    request, protocol, native = job
    return prepare_request(request, protocol, "truncate", native)


def decode_table(files: dict[float, list[Path]], protocols=("torchaudio", "soxr", "native"),
                 workers: list[int] | None = None, modes=("threads",), repeats: int = 1) -> list[dict]:
    """Decode-only clips/s rows for every (protocol, clip length, mode, worker count), judged.

    Args:
        files: clip length in seconds -> its files (see :func:`write_flac_clips`).
        protocols: keys of :data:`PROTOCOLS`.
        workers: worker counts (None: :func:`worker_counts`).
        modes: ``threads`` (the Scorer's decode workers) and / or ``processes``.
        repeats: runs per row; the fastest is kept (less sensitive to other jobs on the machine).

    Returns:
        One dict per row: protocol, resampler, target_rate, clip_seconds, mode, workers, clips, seconds,
        clips_per_s, load_1min, speedup, target_speedup, target_met (None above the core count).
    """
    cores = available_cores()
    rows = []
    for seconds, paths in files.items():
        for name in protocols:
            rate, resampler, native = PROTOCOLS[name]
            for mode in modes:
                for n in workers or worker_counts(cores):
                    elapsed = min(time_decode(paths, seconds, name, n, mode) for _ in range(repeats))
                    rows.append({"protocol": name, "resampler": resampler, "target_rate": rate, "native": native,
                                 "clip_seconds": seconds, "mode": mode, "workers": n, "clips": len(paths),
                                 "seconds": round(elapsed, 3), "clips_per_s": round(len(paths) / elapsed, 2),
                                 "load_1min": round(os.getloadavg()[0], 2)})
    return judge(rows, cores)


def environment() -> dict:
    """The machine beside the figures: cores, CPU, load, and numpy's BLAS (threadpoolctl) in the workers."""
    from threadpoolctl import threadpool_info

    with single_threaded_blas():
        in_workers = [{k: lib.get(k) for k in ("internal_api", "num_threads", "version", "threading_layer")}
                      for lib in threadpool_info() if lib.get("user_api") == "blas"]
    return {"cores": available_cores(), "cpu": _cpu_name(), "machine": platform.machine(),
            "load_avg": [round(v, 2) for v in os.getloadavg()], "blas": threadpool_info(),
            "blas_in_decode_workers": in_workers}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def markdown(rows: list[dict]) -> str:
    """The table as markdown."""
    lines = ["| protocol | clip s | mode | workers | clips/s | x one worker | target (0.8 x N) | load |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        verdict = "-" if r["target_met"] is None else ("met" if r["target_met"] else "not met")
        lines.append(f"| {r['protocol']} ({r['resampler']} -> {r['target_rate'] // 1000} kHz"
                     f"{', native hand-over' if r['native'] else ''}) | {r['clip_seconds']:g} | {r['mode']} | "
                     f"{r['workers']} | {r['clips_per_s']} | {r['speedup']} | {r['target_speedup']}: {verdict} | "
                     f"{r['load_1min']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.decode_scaling", description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=64, help="files per clip length")
    p.add_argument("--seconds", default="10,30", help="clip lengths (comma-separated)")
    p.add_argument("--workers", help="worker counts (default: 1, 2, 4 ... up to the cores)")
    p.add_argument("--protocols", default="torchaudio,soxr,native")
    p.add_argument("--modes", default="threads", help="threads and/or processes")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--files", type=Path, help="folder to write (and reuse) the FLAC files in")
    p.add_argument("--out", type=Path, help="write decode_scaling.json and .md here")
    args = p.parse_args(argv)
    folder = args.files or Path(tempfile.mkdtemp(prefix="deramos-decode-"))
    files = {float(s): write_flac_clips(folder, args.clips, float(s)) for s in args.seconds.split(",")}
    workers = [int(w) for w in args.workers.split(",")] if args.workers else None
    rows = decode_table(files, args.protocols.split(","), workers, args.modes.split(","), args.repeats)
    report = {"environment": environment(), "rows": rows}
    table = markdown(rows)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "decode_scaling.json").write_text(json.dumps(report, indent=1) + "\n")
        (args.out / "decode_scaling.md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
