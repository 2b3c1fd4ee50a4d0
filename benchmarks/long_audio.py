"""Peak memory of ``windows`` mode on long files: long files against the same job on 10 s clips.

``python -m benchmarks.long_audio [--minutes 120] [--files 3] [--rate 48000] [--workers N] [--work DIR]
[--keep] [--bundle DIR] [--code DIR] [--out FILE.json]``

Writes ``--files`` stereo 16-bit FLAC files of ``--minutes`` each at ``--rate`` (tones and noise, written
10 s at a time through ``sf.SoundFile`` so that this process stays small) and as many 10 s clips, then runs
``deramos-rt score MANIFEST --long-audio windows`` in a child process for each set and reports the child's
peak RSS (``os.wait4``'s resource usage of that child: ``ru_maxrss``, the figure ``getrusage(RUSAGE_CHILDREN)``
and ``/usr/bin/time`` report, per child). Issue 23's target: the long files' peak within 300 MB of the
clips'. ``--code DIR`` runs another checkout's ``deramos_rt`` in the children (for a before / after). The
disk is checked before anything is written (2 hours of 48 kHz stereo is about 1 GB of FLAC per file); the
files are deleted afterwards unless ``--keep``. Rows carry the 1-minute load average: figures from a loaded
machine are upper bounds on time; RSS depends little on load.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TARGET_MB = 300.0
CHECKOUT = Path(__file__).resolve().parents[1]  # the deramos_rt the children run unless --code says otherwise
CHUNK_SECONDS = 10.0
CLIP_SECONDS = 10.0
# FLAC of tones plus this much noise takes about 0.8 of 16-bit PCM; a margin on top for the score files.
FLAC_RATIO = 0.85


def write_long_flac(path: Path, seconds: float, rate: int, seed: int) -> None:
    """A stereo 16-bit FLAC of ``seconds``: two slowly gliding tones plus noise, written in 10 s chunks."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    base = rng.uniform(110, 880, 2)
    done = 0
    with sf.SoundFile(str(path), "w", samplerate=rate, channels=2, format="FLAC", subtype="PCM_16") as f:
        while done < int(seconds * rate):
            frames = min(int(CHUNK_SECONDS * rate), int(seconds * rate) - done)
            t = (done + np.arange(frames)) / rate
            tones = [0.4 * np.sin(2 * np.pi * base[c] * t * (1 + 1e-5 * t)) for c in range(2)]
            chunk = np.stack(tones, axis=1) + 0.05 * rng.standard_normal((frames, 2))
            f.write(chunk.astype(np.float32))
            done += frames


def flac_bytes(seconds: float, rate: int, files: int) -> int:
    """Disk the files will take, about."""
    return int(files * seconds * rate * 2 * 2 * FLAC_RATIO)


def write_manifest(path: Path, files: list[Path]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "prompt"])
        for i, file in enumerate(files):
            writer.writerow([str(file), ("calm solo piano", "fast drums with bass", "a sad violin melody")[i % 3]])
    return path


def score_peak(manifest: Path, out: Path, bundle: str | None, code: str | None, workers: int | None) -> dict:
    """Run ``deramos-rt score`` in a child process; its peak RSS, wall time and rows."""
    command = [sys.executable, "-m", "deramos_rt.cli", "score", str(manifest), "--out", str(out),
               "--long-audio", "windows", "--overwrite"]
    if bundle:
        command += ["--bundle", bundle]
    if workers is not None:
        command += ["--decode-workers", str(workers)]
    # ``python -m`` puts the working folder first on sys.path: run in the files' folder, where no other
    # deramos_rt can be picked up, with the checkout asked for on the path.
    env = dict(os.environ, PYTHONPATH=str(Path(code or CHECKOUT).resolve()))
    load = os.getloadavg()[0]
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, cwd=manifest.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    with child.stdout:
        output = child.stdout.read().decode(errors="replace")
    _, status, usage = os.wait4(child.pid, 0)  # this child's own peak, whatever ran before it
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if child.returncode != 0:
        raise SystemExit(f"deramos-rt score {manifest} exited {child.returncode}:\n{output[-3000:]}")
    with open(out, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {"peak_rss_mb": usage.ru_maxrss / 1024, "wall_s": round(wall, 1), "load_1min": round(load, 2),
            "clips": len(rows), "errors": sum(bool(r.get("error")) for r in rows)}


def run(minutes: float, files: int, rate: int, work: Path, bundle: str | None, code: str | None,
        workers: int | None, keep: bool) -> dict:
    """Write the files, score both sets, and judge the target."""
    seconds = minutes * 60
    need = flac_bytes(seconds, rate, files) + flac_bytes(CLIP_SECONDS, rate, files)
    free = shutil.disk_usage(work).free
    if need > 0.9 * free:
        raise SystemExit(f"{work} has {free / 1e9:.1f} GB free; the files need about {need / 1e9:.1f} GB: "
                         "choose --work elsewhere or fewer --minutes")
    folder = Path(tempfile.mkdtemp(prefix="long-audio-", dir=work))
    try:
        start = time.perf_counter()
        long_files = [folder / f"long{i}.flac" for i in range(files)]
        for i, path in enumerate(long_files):
            write_long_flac(path, seconds, rate, seed=i)
        clips = [folder / f"clip{i}.flac" for i in range(files)]
        for i, path in enumerate(clips):
            write_long_flac(path, CLIP_SECONDS, rate, seed=100 + i)
        written = time.perf_counter() - start
        short = score_peak(write_manifest(folder / "clips.csv", clips), folder / "clips-scores.csv", bundle, code,
                           workers)
        long = score_peak(write_manifest(folder / "long.csv", long_files), folder / "long-scores.csv", bundle, code,
                          workers)
        sizes = sum(p.stat().st_size for p in long_files)
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    difference = long["peak_rss_mb"] - short["peak_rss_mb"]
    return {"files": files, "minutes": minutes, "rate": rate, "decode_workers": workers or "the job's plan",
            "flac_gb": round(sizes / 1e9, 2),
            "write_s": round(written, 1), "clips_10s": short, "long": long,
            "difference_mb": round(difference, 1), "target_mb": TARGET_MB, "met": difference <= TARGET_MB,
            "code": str(Path(code or CHECKOUT).resolve()), "kept": str(folder) if keep else None,
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "python": platform.python_version()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=120.0, help="length of each long file")
    parser.add_argument("--files", type=int, default=3)
    parser.add_argument("--rate", type=int, default=48000)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()), help="where the files go")
    parser.add_argument("--bundle", help="a bundle for the children (default: the built-in model)")
    parser.add_argument("--code", help="a checkout whose deramos_rt the children run (default: this one)")
    parser.add_argument("--workers", type=int, help="--decode-workers for both jobs (default: the job's plan); "
                        "as many as --files puts every file in flight at once")
    parser.add_argument("--keep", action="store_true", help="keep the audio files")
    parser.add_argument("--out", type=Path, help="also write the result as JSON here")
    args = parser.parse_args(argv)
    result = run(args.minutes, args.files, args.rate, args.work, args.bundle, args.code, args.workers, args.keep)
    text = json.dumps(result, indent=2)
    print(text)
    print(f"peak RSS: {args.files} x {args.minutes:g} min {result['long']['peak_rss_mb']:.0f} MB, {args.files} x 10 s "
          f"{result['clips_10s']['peak_rss_mb']:.0f} MB: difference {result['difference_mb']:.0f} MB "
          f"({'within' if result['met'] else 'above'} the {TARGET_MB:.0f} MB target)")
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
