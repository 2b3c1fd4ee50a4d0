"""The whole-process row: the README's main job against the research protocol, each as its own process.

Both score the same manifest of generated music files (10 s, 44.1 kHz stereo, WAV / FLAC / MP3 in turn,
8 distinct prompts): ``deramos-rt score MANIFEST --out OUT --overwrite`` (the built-in model, ``auto``
backend, default batch and workers) and ``python -m benchmarks.research_protocol MANIFEST --run RUN --out
OUT`` (torch eager, batch 1, decode on the main thread, prompt encoded per clip). Each runs ``repeats``
times, interleaved (A B A B ...); the wall time is the process's whole life (interpreter start, imports,
opening the model, writing the scores) and the peak RSS is the child's own (``os.wait4``'s ``ru_maxrss``).
The two score files must agree (max |delta MOS| is reported): both did the work.

This is the figure the README quotes.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.discipline import guarded, summarise
from benchmarks.models import PROMPTS, write_clips
from export.calibrate import interleave

REPO = Path(__file__).resolve().parents[1]
FORMATS = ("wav", "flac", "mp3")


def write_manifest(folder: Path, count: int, seconds: float = 10.0) -> Path:
    """``count`` files cycling WAV / FLAC / MP3 and a CSV manifest (id, path, prompt, system) over them."""
    paths = write_clips(folder / "audio", count, seconds, formats=FORMATS)
    manifest = folder / f"manifest-{count}.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "path", "prompt", "system"])
        for i, path in enumerate(paths):
            writer.writerow([path.stem, str(path.resolve()), PROMPTS[i % len(PROMPTS)], path.stem[:4]])
    return manifest


def deramos_command(manifest: Path, out: Path, bundle: Path | None) -> list[str]:
    """The README's job: the installed ``deramos-rt`` script when there is one beside this Python."""
    script = Path(sys.executable).with_name("deramos-rt")
    head = [str(script)] if script.is_file() else [sys.executable, "-m", "deramos_rt.cli"]
    command = head + ["score", str(manifest), "--out", str(out), "--overwrite"]
    return command + (["--bundle", str(bundle)] if bundle else [])


def research_command(manifest: Path, out: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "benchmarks.research_protocol", str(manifest), "--run", str(run_dir), "--out", str(out)]


# Spawns the measured command from a small interpreter and reports that child's own figures. Spawned
# straight from the report's process, a child's peak RSS would start at the report's own (a vfork'd child
# shares the parent's pages until exec and is charged for them).
LAUNCHER = """
import json, os, sys, time
start = time.perf_counter()
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"seconds": time.perf_counter() - start, "peak_rss_mb": usage.ru_maxrss / 1024,
               "cpu_s": usage.ru_utime + usage.ru_stime, "exit": os.waitstatus_to_exitcode(status)}, f)
"""


def run_process(command: list[str], stderr_file: Path) -> dict:
    """Run ``command`` (from the repository root, its code first on the path) to its end: wall seconds, the
    child's own peak RSS and CPU seconds, exit status. Its stderr goes to ``stderr_file``.

    Raises:
        RuntimeError: the command failed (its last stderr line is named).
    """
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    figures = stderr_file.with_suffix(".json")
    with open(stderr_file, "w") as err:
        subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(figures), *command], cwd=str(REPO),
                       env={**os.environ, "PYTHONPATH": path}, stdout=subprocess.DEVNULL, stderr=err, check=True)
    result = json.loads(figures.read_text())
    if result["exit"] not in (0, 3):  # 3: some clips failed, which the score file shows
        tail = stderr_file.read_text().strip().splitlines()[-1:]
        raise RuntimeError(f"{' '.join(command[:3])} ... exited {result['exit']}: {tail[0] if tail else '(no stderr)'}")
    return result


def read_scores(path: Path) -> dict[str, tuple[float, float]]:
    """{id: (mi, ta)} of a score file (the runtime's or the research script's CSV)."""
    with path.open(newline="") as f:
        return {row["id"]: (float(row["mi"] or "nan"), float(row["ta"] or "nan")) for row in csv.DictReader(f)}


def agreement(a: dict, b: dict) -> dict:
    """max |delta MOS| of MI and TA between two score files over their shared ids."""
    shared = sorted(set(a) & set(b))
    return {"clips_compared": len(shared),
            "mi_max_abs": max((abs(a[i][0] - b[i][0]) for i in shared), default=None),
            "ta_max_abs": max((abs(a[i][1] - b[i][1]) for i in shared), default=None)}


def whole_process(run_dir: Path, bundle: Path | None, work: Path, clips: int, repeats: int, log=print) -> dict:
    """Both jobs on the same ``clips`` files, interleaved ``repeats`` times (see the module docstring)."""
    folder = work / "whole"
    manifest = write_manifest(folder, clips)
    outs = folder / "out"
    shutil.rmtree(outs, ignore_errors=True)
    outs.mkdir(parents=True)
    commands = {"deramos-rt score": lambda i: deramos_command(manifest, outs / f"deramos-{i}.csv", bundle),
                "research protocol": lambda i: research_command(manifest, outs / f"research-{i}.csv", run_dir)}
    counter = {name: 0 for name in commands}

    def task(name):
        def run() -> dict:
            counter[name] += 1
            result = run_process(commands[name](counter[name]), outs / f"{name.split()[0]}-{counter[name]}.stderr")
            result["clips_per_s"] = clips / result["seconds"]
            log(f"whole process: {name} {clips} clips in {result['seconds']:.1f} s = {result['clips_per_s']:.1f} "
                f"clips/s, peak RSS {result['peak_rss_mb']:.0f} MB")
            return result
        return guarded(run, log, name)

    runs = interleave({name: task(name) for name in commands}, repeats)
    rows = {name: summarise(r) for name, r in runs.items()}
    out = {"clips": clips, "files": f"{clips} files of 10 s 44.1 kHz stereo, {'/'.join(FORMATS)} in turn; "
                                     f"{len(PROMPTS)} distinct prompts", "manifest": str(manifest),
           "commands": {name: " ".join(make(1)) for name, make in commands.items()}, "rows": rows}
    fast, slow = rows["deramos-rt score"], rows["research protocol"]
    if "error" not in fast and "error" not in slow:
        out["speedup"] = slow["seconds"] / fast["seconds"]
        out["agreement"] = agreement(read_scores(outs / "deramos-1.csv"), read_scores(outs / "research-1.csv"))
    return out
