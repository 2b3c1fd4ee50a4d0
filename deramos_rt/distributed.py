"""Scale-out scoring on Ray Data: the runtime's :class:`~deramos_rt.scorer.Scorer` on a pool of Ray actors.

``score_dataset(manifest, out, ...)`` (and ``deramos-rt score MANIFEST --out DIR --ray [ADDRESS]``) runs::

    manifest (deramos_rt.manifest, checked completely on the driver)
      -> ray.data.from_items                       one row per clip still to score
      -> map_batches(decode_batch)                 Ray tasks: pipeline.prepare_request, the single-process decode
      -> map_batches(ScoreActor, concurrency=N)    actors, each loads the model once (CPU or GPU per actor)
      -> write_csv / write_parquet                 Ray's own writers, into OUT/scores/

then ``OUT/systems.csv`` (per-system summary) and, when asked and ``deramos_rt.compare`` is installed,
the comparison report.

Output: every file in ``OUT/scores/`` holds rows of the score-file contract (``id, path, system, prompt,
mi, ta, mi_std, ta_std, error``, with ``probs`` ``mi_probs, ta_probs`` (JSON text in CSV, lists in Parquet), then the
provenance ``backend, precision, bundle, deramos_rt``). Paths are absolute (workers may run on other
machines or in other folders). A clip that cannot be decoded or scored gets ``error`` exactly as in the
single-process path, because decoding and scoring are the same functions.

Resume and duplicates: a rerun reads the ids already in ``OUT/scores/`` and schedules only the others; a
CSV file torn by a killed driver keeps its complete lines, a Parquet file without its footer is set aside
as ``*.torn``. Ray names a write task's file after the write and the task, so a retried write overwrites
its own file. Ray restarts a dead actor (``max_restarts``) and retries its batch (``max_task_retries``);
after the write, every scheduled id must be in the output once, else the job fails naming what is
missing (a rerun resumes).

Ray is an optional dependency (the ``ray`` extra); this module imports it only inside functions, and
``import deramos_rt`` never imports this module.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from deramos_rt.errors import EXIT_OK, EXIT_PARTIAL, DeramosError
from deramos_rt.jobs import OutputLock
from deramos_rt.scorefile import BASE_COLUMNS, PROB_COLUMNS, PROVENANCE, columns, write_rows, write_summary

log = logging.getLogger(__name__)

FILE_FORMATS = ("csv", "parquet")
SCORES_DIR = "scores"
SUMMARY_FILE = "systems.csv"
# Fault injection for the tests only: when this names an existing file, the first actor batch that
# removes it kills its own process, as a lost worker would.
CRASH_ENV = "DERAMOS_RAY_TEST_CRASH_MARKER"
INSTALL_HINT = "Ray is not installed: pip install 'deramos_rt[ray]' (ray[data]>=2.40)"


@dataclass
class RayJobReport:
    """What a Ray job did. ``exit_code``: 0 every clip in the output scored, 3 some clips failed.

    Attributes:
        out: the output folder; ``scores`` its per-clip files' folder; ``summary`` the per-system CSV;
            ``report`` the comparison report folder (None when not written).
        total: clips in the manifest; skipped: already in the output before this run; scored / failed:
            this run's clips with / without both scores; failed_before: failures among the skipped.
        seconds: wall time of the whole job, Ray start-up included.
    """

    out: Path
    scores: Path
    summary: Path
    report: Path | None
    total: int
    skipped: int
    scored: int
    failed: int
    failed_before: int
    seconds: float

    @property
    def exit_code(self) -> int:
        return EXIT_OK if self.failed + self.failed_before == 0 else EXIT_PARTIAL


def import_ray():
    """``ray`` and ``ray.data``, or a :class:`DeramosError` saying how to install them."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise DeramosError(f"{INSTALL_HINT} ({exc})") from exc
    return ray


# ---------------------------------------------------------------------------------------- the stages


def decode_batch(batch, protocol, long_audio: str):
    """Ray task: decode and prepare a batch of clips with the model's audio protocol.

    Args:
        batch: ``pyarrow.Table`` with ``id, path, system, prompt``.
        protocol: the model's :class:`~deramos_rt.audio.AudioProtocol`.
        long_audio: ``truncate`` or ``windows``.

    Returns:
        The same columns plus ``audio`` (float32 windows as bytes), ``weights`` (float64 bytes) and
        ``decode_error`` (None, or why the clip could not be decoded).
    """
    import pyarrow as pa

    from deramos_rt.pipeline import ClipRequest, prepare_request

    audio, weights, errors = [], [], []
    for row in batch.to_pylist():
        request = ClipRequest(row["id"], row["path"], row["system"], row["prompt"])
        prepared = prepare_request(request, protocol, long_audio)
        errors.append(prepared.error)
        audio.append(_bytes(prepared.windows, np.float32))
        weights.append(_bytes(prepared.weights, np.float64))
    batch = batch.append_column("audio", pa.array(audio, pa.large_binary()))
    batch = batch.append_column("weights", pa.array(weights, pa.large_binary()))
    return batch.append_column("decode_error", pa.array(errors, pa.string()))


def _bytes(array, dtype) -> bytes | None:
    return None if array is None else np.ascontiguousarray(array, dtype).tobytes()


def _crash_if_armed() -> None:
    """Test fault injection (see :data:`CRASH_ENV`): exactly one process removes the marker and dies."""
    marker = os.environ.get(CRASH_ENV)
    if not marker:
        return
    try:
        os.unlink(marker)
    except FileNotFoundError:
        return
    os._exit(1)


class ScoreActor:
    """Ray actor: one :class:`~deramos_rt.scorer.Scorer` per actor, loaded once, scoring decoded batches.

    Args:
        bundle: bundle folder or run directory (as for the Scorer); must be the same files on every node.
        identity: the model identity the driver resolved; an actor that loads other files refuses to run.
        options: the Scorer's keyword arguments (backend, device, precision, batch_size, threads, long_audio).
        probs: also return the distributions.
        file_format: ``csv`` (distributions as JSON text) or ``parquet`` (as lists).
    """

    def __init__(self, bundle, identity: str, options: dict, probs: bool, file_format: str):
        from deramos_rt.scorer import Scorer

        self.scorer = Scorer(bundle, **options)
        if self.scorer.source.identity != identity:
            raise DeramosError(f"the model at {bundle} on this node is {self.scorer.source.identity}, the driver's is "
                               f"{identity}: every node must see the same bundle (shared storage)")
        self.provenance = self.scorer.provenance
        self.num_samples = self.scorer.protocol.num_samples
        self.probs = probs
        self.file_format = file_format

    def __call__(self, batch):
        _crash_if_armed()
        prepared = [self._prepared(row) for row in batch.to_pylist()]
        # The Scorer's batching over already-decoded clips: the same code its own decode threads feed.
        results = list(self.scorer.score_prepared(prepared))
        return results_table(results, self.provenance, self.probs, self.file_format)

    def _prepared(self, row: dict):
        from deramos_rt.pipeline import ClipRequest, Prepared

        request = ClipRequest(row["id"], row["path"], row["system"], row["prompt"])
        if row["decode_error"] is not None:
            return Prepared(request, error=row["decode_error"])
        windows = np.frombuffer(row["audio"], dtype=np.float32).reshape(-1, self.num_samples)
        return Prepared(request, windows, np.frombuffer(row["weights"], dtype=np.float64))


def results_table(results: Iterable, provenance: dict, probs: bool, file_format: str):
    """A ``pyarrow.Table`` of :class:`~deramos_rt.scorer.ClipScore` rows with a fixed schema."""
    import pyarrow as pa

    results = list(results)
    probs_type = pa.string() if file_format == "csv" else pa.list_(pa.float64())
    fields = [(c, pa.float64() if c in ("mi", "ta", "mi_std", "ta_std") else pa.string()) for c in BASE_COLUMNS]
    fields += [(c, probs_type) for c in PROB_COLUMNS] if probs else []
    fields += [(c, pa.string()) for c in PROVENANCE]
    data = {c: [getattr(r, c) for r in results] for c in BASE_COLUMNS}
    for c in PROB_COLUMNS if probs else ():
        values = [getattr(r, c) for r in results]
        data[c] = [None if v is None else json.dumps(v) for v in values] if file_format == "csv" else values
    for c in PROVENANCE:
        data[c] = [provenance[c]] * len(results)
    return pa.table({c: pa.array(data[c], t) for c, t in fields}, schema=pa.schema(fields))


# ------------------------------------------------------------------------------------ existing output


def part_files(scores: Path, file_format: str) -> list[Path]:
    """The per-clip files in ``scores`` (sorted)."""
    return sorted(scores.glob(f"*.{file_format}")) if scores.is_dir() else []


def read_results(out: str | Path, file_format: str | None = None) -> list[dict]:
    """Every per-clip row of a Ray job's output folder (CSV cells as text, Parquet values as typed).

    Args:
        out: the job's ``out`` folder.
        file_format: ``csv`` or ``parquet`` (None: whichever the folder holds).

    Raises:
        DeramosError: the folder holds both formats, or a file cannot be read.
    """
    scores = Path(out) / SCORES_DIR
    file_format = file_format or _existing_format(scores) or "csv"
    rows = []
    for path in part_files(scores, file_format):
        rows.extend(_read_part(path))
    return rows


def _existing_format(scores: Path) -> str | None:
    found = [f for f in FILE_FORMATS if part_files(scores, f)]
    if len(found) > 1:
        raise DeramosError(f"{scores} holds both CSV and Parquet score files; keep one format per output folder")
    return found[0] if found else None


def _read_part(path: Path) -> list[dict]:
    if path.suffix == ".csv":
        from deramos_rt.scorefile import read_rows

        try:
            return list(read_rows(path))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise DeramosError(f"score file {path} is not readable CSV: {exc}") from exc
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for a torn or foreign file
        raise DeramosError(f"score file {path} is not readable Parquet: {exc}") from exc


def _repair_torn(scores: Path, file_format: str) -> None:
    """Make the output readable after a killed run: cut a torn CSV tail, set aside a footerless Parquet."""
    for path in part_files(scores, file_format):
        if file_format == "csv":
            from deramos_rt.scorefile import complete_records

            data = path.read_bytes()
            keep = complete_records(data, True)
            if keep < len(data):
                log.warning("resume: dropped a torn last line of %s (%d bytes)", path, len(data) - keep)
                with path.open("r+b") as f:
                    f.truncate(keep)
            continue
        try:
            _read_part(path)
        except DeramosError:
            log.warning("resume: %s is torn (its writer was killed); set aside as %s.torn", path, path.name)
            os.replace(path, path.with_name(path.name + ".torn"))


def _check_resumable(rows: list[dict], scores: Path, file_format: str, cols: tuple[str, ...], identity: str) -> None:
    for path in part_files(scores, file_format)[:1]:
        found = tuple(_header(path))
        if found and found != cols:
            raise DeramosError(f"cannot resume {scores}: its columns ({', '.join(found)}) differ from this run's "
                               f"({', '.join(cols)}); use the same probs setting or overwrite")
    for row in rows:
        if row.get("bundle") and row["bundle"] != identity:
            raise DeramosError(f"cannot resume {scores}: it was scored with model {row['bundle']}, this run uses "
                               f"{identity}; overwrite it or choose another output folder")


def _header(path: Path) -> list[str]:
    if path.suffix == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            return next(csv.reader(f), [])
    import pyarrow.parquet as pq

    return list(pq.read_schema(path).names)


def _refuse_existing(scores: Path, resume: bool, overwrite: bool) -> list[Path]:
    """The score files already in ``scores``; refused unless resuming or overwriting."""
    existing = [p for f in FILE_FORMATS for p in part_files(scores, f)]
    if existing and not (resume or overwrite):
        raise DeramosError(f"output {scores} already holds scores: resume it (--resume / resume=True: finished "
                           "clips are skipped) or overwrite it (--overwrite / overwrite=True)")
    return existing


def prepare_output(out: Path, file_format: str, probs: bool, identity: str, resume: bool,
                   overwrite: bool) -> list[dict]:
    """Check (or clear) the output folder; returns the rows already written when resuming.

    Raises:
        DeramosError: output exists and neither resume nor overwrite; another format, other columns or
            another model than this run's.
    """
    scores = out / SCORES_DIR
    existing = _refuse_existing(scores, resume, overwrite)
    if existing and overwrite:
        for path in existing:
            path.unlink()
        (out / SUMMARY_FILE).unlink(missing_ok=True)
        return []
    other = _existing_format(scores)
    if other not in (None, file_format):
        raise DeramosError(f"cannot resume {scores} as {file_format}: it holds {other} files")
    _repair_torn(scores, file_format)
    rows = read_results(out, file_format)
    _check_resumable(rows, scores, file_format, columns(probs), identity)
    return rows


# -------------------------------------------------------------------------------------------- Ray


def ray_session(address: str | None, need_cpus: float, temp_dir: str | None = None):
    """Connect to Ray; returns ``(ray, started)``; ``started``: this call started it (shut it down after).

    ``address`` None: the Ray instance this process already initialized, else a new local one with at
    least ``need_cpus`` logical CPUs (the actors' reservations plus one for decoding and writing).
    """
    ray = import_ray()
    if ray.is_initialized():
        return ray, False
    if address:
        ray.init(address=address, log_to_driver=True)
        return ray, True
    cpus = max(os.cpu_count() or 1, math.ceil(need_cpus))
    kwargs = {"_temp_dir": temp_dir} if temp_dir else {}
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, **kwargs)
    return ray, True


def check_resources(ray, actors: int, cpus_per_actor: float, gpus_per_actor: float, decode_cpus: float,
                    strict: bool = True) -> None:
    """Refuse a job the cluster cannot place (it would wait forever for its actors).

    Args:
        strict: raise (a local instance cannot grow); False only logs it (an autoscaling cluster may add
            nodes for the actors).
    """
    have = ray.cluster_resources()
    problems = []
    need_cpu = actors * cpus_per_actor + decode_cpus
    if have.get("CPU", 0) < need_cpu:
        problems.append(f"the Ray cluster has {have.get('CPU', 0):g} CPUs; {actors} actors x {cpus_per_actor:g} "
                        f"CPU + {decode_cpus:g} for decoding need {need_cpu:g}: use fewer actors or "
                        "cpus_per_actor, or a bigger cluster")
    if gpus_per_actor and have.get("GPU", 0) < actors * gpus_per_actor:
        problems.append(f"the Ray cluster has {have.get('GPU', 0):g} GPUs; {actors} actors x {gpus_per_actor:g} "
                        f"GPU need {actors * gpus_per_actor:g}: use fewer actors or a cluster with GPUs")
    for problem in problems:
        if strict:
            raise DeramosError(problem)
        log.warning("%s (waiting for the cluster to grow)", problem)


def model_identity(ray, bundle, backend: str, device: str | None, gpus_per_actor: float):
    """``(audio protocol, model identity)`` without loading the model on the driver.

    A bundle is read here (its manifest, files verified); a run directory needs the model itself, so
    one Ray task opens it, with an actor's resources.
    """
    from deramos_rt.source import resolve_source

    source = resolve_source(bundle, backend)
    if source.kind == "bundle":
        return source.protocol, source.identity
    task = ray.remote(_probe_model).options(num_cpus=1, num_gpus=gpus_per_actor)
    return ray.get(task.remote(bundle, backend, device))


def _probe_model(bundle, backend: str, device: str | None):
    from deramos_rt.scorer import Scorer

    with Scorer(bundle, backend=backend, device=device, decode_workers=0) as scorer:
        return scorer.protocol, scorer.source.identity


# ------------------------------------------------------------------------------------------- the job


def score_dataset(manifest, out, bundle=None, actors: int = 2, gpus_per_actor: float = 0.0,
                  cpus_per_actor: float = 1.0, address: str | None = None, backend: str = "auto",
                  device: str | None = None, precision: str | None = None, batch_size: int | None = None,
                  threads: int | None = None, long_audio: str = "truncate", probs: bool = False,
                  file_format: str = "csv", resume: bool = True, overwrite: bool = False,
                  report: str | Path | None = None, rows_per_file: int | None = None, max_restarts: int = 3,
                  decode_cpus: float = 0.5, temp_dir: str | None = None) -> RayJobReport:
    """Score a manifest on Ray Data: decode in Ray tasks, score on a pool of Scorer actors.

    Args:
        manifest: CSV or JSONL manifest (``deramos_rt.manifest``); relative clip paths are relative to it.
        out: output folder: ``scores/`` (per-clip files) and ``systems.csv``.
        bundle: bundle folder or run directory, the same path on every node (None: the built-in model).
        actors: Scorer actors (each loads the model once).
        gpus_per_actor: GPUs reserved per actor (0: CPU actors; fractions share a GPU).
        cpus_per_actor: CPUs reserved per actor (also its backend threads on CPU unless ``threads``).
        address: a Ray cluster address (``auto``, ``ray://host:10001``, ``host:6379``); None: the Ray
            instance this process already initialized, else a new local one (shut down at the end).
        backend, device, precision, batch_size, threads, long_audio: as for the Scorer;
            ``batch_size`` is also the clips per actor call.
        probs: also write the 20-bin distributions.
        file_format: ``csv`` or ``parquet`` (Ray's writers).
        resume: skip clips already in ``out`` (a rerun continues a killed or partial job).
        overwrite: delete existing scores in ``out`` first.
        report: a folder for the comparison report (``deramos_rt.compare``, when installed); None: none.
        rows_per_file: at least this many clips per output file (None: one file per actor call; a
            killed job loses at most the unwritten rows, rescored on resume).
        max_restarts: restarts of a dead actor, and retries of its batch, before the job fails.
        decode_cpus: CPUs reserved per decode task.
        temp_dir: Ray's session folder when this call starts a local Ray (None: Ray's default).

    Returns:
        A :class:`RayJobReport`.

    Raises:
        DeramosError: Ray missing, a bad argument or manifest, output that cannot be resumed, a cluster
            too small for the actors, or clips missing from the output after the run.
    """
    from deramos_rt.manifest import check_manifest, iter_manifest

    start = time.perf_counter()
    _check_arguments(actors, gpus_per_actor, cpus_per_actor, file_format, long_audio, rows_per_file, max_restarts)
    manifest = Path(manifest).resolve()  # workers may run elsewhere: give them absolute clip paths
    total = check_manifest(manifest)
    out = Path(out).resolve()
    if out == manifest or out.is_file():
        raise DeramosError(f"--out {out} is {'the manifest' if out == manifest else 'a file'}: a Ray job writes a "
                           "folder (scores/ and systems.csv); give a new or existing output folder")
    # One job per output folder at a time, as for single-process jobs (OUT.lock beside the folder).
    with OutputLock(out):
        _refuse_existing(out / SCORES_DIR, resume, overwrite)  # before starting Ray: fail fast
        ray, started = ray_session(address, actors * cpus_per_actor + decode_cpus, temp_dir)
        try:
            check_resources(ray, actors, cpus_per_actor, gpus_per_actor, decode_cpus, strict=not address)
            protocol, identity = model_identity(ray, bundle, backend, device, gpus_per_actor)
            before = prepare_output(out, file_format, probs, identity, resume, overwrite)
            done = {str(row["id"]) for row in before}
            todo = [_row(r) for r in iter_manifest(manifest) if r.id not in done]
            # CPU actors stay on the CPU even on a node with GPUs (those belong to the GPU actors).
            device = device or (None if gpus_per_actor else "cpu")
            options = {"backend": backend, "device": device, "precision": precision, "batch_size": batch_size,
                       "threads": threads or (None if gpus_per_actor else max(1, int(cpus_per_actor))),
                       "decode_workers": 0, "long_audio": long_audio}
            if todo:
                _run_pipeline(ray, todo, out / SCORES_DIR, protocol, bundle, identity, options, probs, file_format,
                              actors, cpus_per_actor, gpus_per_actor, decode_cpus, rows_per_file, max_restarts)
        finally:
            if started:
                ray.shutdown()
        rows = read_results(out, file_format)
        _check_complete(rows, todo, out / SCORES_DIR)
        summary = write_summary(rows, out / SUMMARY_FILE)
        new = {r["id"] for r in todo}
        failed = sum(1 for r in rows if str(r["id"]) in new and r.get("error"))
        failed_before = sum(1 for r in before if r.get("error"))
        report_dir = write_report(rows, Path(report), probs) if report else None
        return RayJobReport(out, out / SCORES_DIR, summary, report_dir, total, len(done), len(todo) - failed, failed,
                            failed_before, time.perf_counter() - start)


def _check_arguments(actors, gpus_per_actor, cpus_per_actor, file_format, long_audio, rows_per_file,
                     max_restarts) -> None:
    from deramos_rt.audio import LONG_AUDIO

    if int(actors) < 1:
        raise DeramosError(f"actors must be at least 1, got {actors}")
    if gpus_per_actor < 0 or cpus_per_actor <= 0:
        raise DeramosError(f"gpus_per_actor must be >= 0 and cpus_per_actor > 0, got {gpus_per_actor} and "
                           f"{cpus_per_actor}")
    if file_format not in FILE_FORMATS:
        raise DeramosError(f"unknown output format {file_format!r}; choose one of: {', '.join(FILE_FORMATS)}")
    if long_audio not in LONG_AUDIO:
        raise DeramosError(f"unknown long_audio {long_audio!r}; choose one of: {', '.join(LONG_AUDIO)}")
    if rows_per_file is not None and int(rows_per_file) < 1:
        raise DeramosError(f"rows_per_file must be at least 1, got {rows_per_file}")
    if int(max_restarts) < 0:
        raise DeramosError(f"max_restarts must be 0 or more, got {max_restarts}")


def _row(request) -> dict:
    return {"id": request.id, "path": request.path, "system": request.system, "prompt": request.prompt}


def _run_pipeline(ray, todo, scores: Path, protocol, bundle, identity, options, probs, file_format, actors,
                  cpus_per_actor, gpus_per_actor, decode_cpus, rows_per_file, max_restarts) -> None:
    import ray.data

    batch = options["batch_size"] or (32 if gpus_per_actor else 8)
    # One block per actor call, so the calls spread over the actors from the start.
    ds = ray.data.from_items(todo, override_num_blocks=max(1, math.ceil(len(todo) / batch)))
    # Decoding stays in tasks of its own (not fused into the actors, which would decode before each batch
    # instead of alongside): Ray Data fuses only ops with equal remote options, and the actors' carry
    # max_restarts / max_task_retries.
    ds = ds.map_batches(decode_batch, batch_size=batch, batch_format="pyarrow", num_cpus=decode_cpus,
                        fn_kwargs={"protocol": protocol, "long_audio": options["long_audio"]})
    with warnings.catch_warnings():
        # Ray >= 2.60 warns that per-actor options passed as keyword arguments are deprecated, yet names
        # no other way to bound actor restarts and task retries (its default is unbounded).
        warnings.filterwarnings("ignore", message=".*ray_remote_args.*is deprecated")
        ds = ds.map_batches(ScoreActor, batch_size=batch, batch_format="pyarrow",
                            compute=ray.data.ActorPoolStrategy(size=int(actors)),
                            num_cpus=cpus_per_actor, num_gpus=gpus_per_actor or None,
                            fn_constructor_kwargs={"bundle": None if bundle is None else str(bundle),
                                                   "identity": identity, "options": options, "probs": probs,
                                                   "file_format": file_format},
                            max_restarts=int(max_restarts), max_task_retries=int(max_restarts))
    scores.mkdir(parents=True, exist_ok=True)
    writer = ds.write_csv if file_format == "csv" else ds.write_parquet
    writer(str(scores), min_rows_per_file=rows_per_file)


def _check_complete(rows: list[dict], todo: list[dict], scores: Path) -> None:
    """Every scheduled clip is in the output exactly once."""
    counts: dict[str, int] = {}
    for row in rows:
        counts[str(row["id"])] = counts.get(str(row["id"]), 0) + 1
    twice = [i for i, n in counts.items() if n > 1]
    missing = [r["id"] for r in todo if r["id"] not in counts]
    if twice:
        raise DeramosError(f"{scores}: {len(twice)} clip ids appear more than once (e.g. {twice[0]!r}); were two "
                           "jobs writing to this folder?")
    if missing:
        raise DeramosError(f"{scores}: {len(missing)} scheduled clips are missing from the output (e.g. "
                           f"{missing[0]!r}); run the job again to resume them")


def write_report(rows: list[dict], report_dir: Path, probs: bool) -> Path:
    """The comparison report (:mod:`deramos_rt.compare`) of the rows, in ``report_dir``.

    The comparison reads one score file, so the rows are first gathered into ``report_dir/scores.csv``.
    """
    from deramos_rt.compare import compare
    from deramos_rt.compare_report import write_report as write_comparison

    merged = report_dir / "scores.csv"
    write_rows(merged, sorted(rows, key=lambda r: str(r["id"])), columns(probs))
    write_comparison(compare(merged), report_dir, report_dir)
    return report_dir


# ------------------------------------------------------------------------------------------ benchmark


def benchmark(manifest, bundle=None, actors: Iterable[int] = (1, 2), repeat: int = 1, threads: int | None = None,
              work: str | Path | None = None, temp_dir: str | None = None) -> list[dict]:
    """Clips/s of the single-process scorer and of Ray jobs with each actor count, on the same machine.

    Every job starts from an empty output folder; the single-process figure includes opening the model,
    the Ray figures include starting the actors (the Ray instance itself is started once, before).

    Args:
        manifest: the clips (``repeat`` copies of each are scored, with distinct ids).
        bundle: as for the Scorer.
        actors: Ray actor counts to time.
        repeat: copies of the manifest's clips.
        threads: backend threads, single process and per actor (None: one per actor's CPU; the
            backend's default in the single process).
        work: scratch folder (None: a temporary one).
        temp_dir: Ray's session folder.

    Returns:
        ``[{"how", "clips", "seconds", "clips_per_s"}]``.
    """
    import tempfile

    from deramos_rt.jobs import score_manifest
    from deramos_rt.scorer import Scorer

    work = Path(work or tempfile.mkdtemp(prefix="deramos-ray-bench-"))
    copies = work / "manifest.csv"
    clips = _repeat_manifest(manifest, copies, repeat)
    rows = []
    start = time.perf_counter()
    with Scorer(bundle, threads=threads) as scorer:
        score_manifest(scorer, copies, work / "single.csv", overwrite=True)
    rows.append(_timing(f"single process ({threads or 'default'} threads)", clips, time.perf_counter() - start))
    ray, started = ray_session(None, max(actors) + 0.5, temp_dir)  # 1 CPU per actor + decoding
    try:
        for n in actors:
            job = score_dataset(copies, work / f"ray-{n}", bundle=bundle, actors=n, threads=threads, overwrite=True)
            rows.append(_timing(f"ray, {n} actor{'s' if n > 1 else ''}", clips, job.seconds))
    finally:
        if started:
            ray.shutdown()
    return rows


def _repeat_manifest(manifest, out: Path, repeat: int) -> int:
    from deramos_rt.manifest import iter_manifest

    out.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with out.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["id", "path", "system", "prompt"])
        for copy in range(repeat):
            for request in iter_manifest(Path(manifest).resolve()):
                writer.writerow([f"{request.id}~{copy}", request.path, request.system, request.prompt])
                count += 1
    return count


def _timing(how: str, clips: int, seconds: float) -> dict:
    return {"how": how, "clips": clips, "seconds": round(seconds, 2), "clips_per_s": round(clips / seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    """``python -m deramos_rt.distributed MANIFEST --bundle B --actors 1 2 --repeat 4``: the benchmark."""
    import argparse
    import platform

    parser = argparse.ArgumentParser(prog="python -m deramos_rt.distributed",
                                     description="Time the single-process scorer against Ray jobs.")
    parser.add_argument("manifest")
    parser.add_argument("--bundle", help="bundle folder or run directory (default: the built-in model)")
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=1, help="copies of the manifest's clips")
    parser.add_argument("--threads", type=int, help="backend threads (single process and per actor)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    rows = benchmark(args.manifest, args.bundle, args.actors, args.repeat, args.threads)
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    for row in rows:
        print(f"{row['how']:32s} {row['clips']:5d} clips {row['seconds']:8.2f} s {row['clips_per_s']:8.2f} clips/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
