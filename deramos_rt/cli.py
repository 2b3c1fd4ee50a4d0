"""The ``deramos-rt`` command: ``score``, ``info``, ``compare`` and ``trust``.

``deramos-rt score MANIFEST --out scores.csv`` scores every clip of a manifest (``deramos_rt.manifest``) into a
score file (``deramos_rt.scorefile``); ``deramos-rt score FOLDER [--prompts TABLE] --out scores.csv`` every
audio file under a folder (``deramos_rt.folder``; the path decides which);
``deramos-rt score --musiceval DIR --split test --out ...`` scores a MusicEval split and prints the
utterance- and system-level metrics against its labels. Every job checks its output and locks it first
(``deramos_rt.jobs``). Exit codes: 0 every clip scored, 3 some clips failed (each has its error in the
output), 2 the job could not start or could not write (one line naming the file), 130 interrupted
(finished clips are kept in ``OUT.partial``; rerun with ``--resume``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from deramos_rt.console import run_cli, setup_logging, step, versions
from deramos_rt.errors import EXIT_OK, DeramosError

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    from deramos_rt.audio import LONG_AUDIO
    from deramos_rt.backends import NAMES

    parser = argparse.ArgumentParser(prog="deramos-rt", description="DeRA-MOS scoring of text-to-music clips.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    score = sub.add_parser("score", help="score a manifest, a folder or a MusicEval split into a score file")
    score.add_argument("manifest", nargs="?", metavar="MANIFEST|FOLDER",
                       help="CSV or JSONL with path, prompt[, id, system]; or a folder: every audio file under it")
    score.add_argument("--prompts", metavar="TABLE", help="with a FOLDER: prompts by file name, a CSV / TSV / "
                       "JSONL table (id,prompt; MusicCaps' ytid,caption; MusicEval's prompt_info.txt); "
                       "without it a folder is scored for MI only")
    score.add_argument("--musiceval", metavar="DIR", help="score a MusicEval-layout folder instead of a manifest")
    score.add_argument("--split", default="test", choices=["train", "dev", "test"], help="MusicEval split")
    score.add_argument("--out", required=True, help="score file, .csv or .jsonl")
    score.add_argument("--bundle", help="bundle folder, training run directory or built-in model name "
                       "(default: the built-in model 'default')")
    score.add_argument("--backend", default="auto", choices=NAMES)
    score.add_argument("--device", help="cpu, cuda, cuda:N (default: the backend's choice)")
    score.add_argument("--precision", choices=["fp32", "int8", "fp16", "bf16"])
    score.add_argument("--batch-size", type=int, help="windows per inference call (default 8 CPU / 32 GPU)")
    score.add_argument("--decode-workers", "--workers", dest="decode_workers", type=int,
                       help="threads that decode (and on the CPU resample) clips (default: all cores but one "
                            "on a GPU, a quarter of them on the CPU)")
    score.add_argument("--threads", type=int, help="CPU threads for the backend (default: the cores the decode "
                                                   "workers leave)")
    score.add_argument("--long-audio", default="truncate", choices=LONG_AUDIO,
                       help="truncate (the paper's protocol) or windows (weighted mean over clip-length windows)")
    score.add_argument("--resume", action="store_true", help="continue OUT.partial / OUT, skipping finished clips")
    score.add_argument("--overwrite", action="store_true", help="discard existing output")
    score.add_argument("--probs", action="store_true", help="also write the MI / TA distributions")
    score.add_argument("--report", metavar="DIR", help="write a comparison report (deramos-rt compare) here")
    score.add_argument("--trust-bundle", action="store_true",
                       help="let tensorrt / aoti (and auto) load this bundle's native code although it is not "
                            "trusted here (see deramos-rt trust); ONNX graphs never need it")
    score.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                       help="score on Ray Data (pip install 'deramos_rt[ray]'); --out is then a folder. ADDRESS: a "
                            "Ray cluster (auto, HOST:6379, ray://HOST:10001); none: a local Ray instance")
    score.add_argument("--actors", type=int, default=2, help="with --ray: Scorer actors (each loads the model once)")
    score.add_argument("--gpus-per-actor", type=float, default=0.0, help="with --ray: GPUs per actor (0: CPU actors)")
    score.add_argument("--cpus-per-actor", type=float, default=1.0,
                       help="with --ray: CPUs per actor (also its backend threads unless --threads)")
    score.add_argument("--format", choices=["csv", "parquet"], default="csv", help="with --ray: per-clip file format")
    sub.add_parser("info", help="backends, providers, devices, versions and what is missing")
    add_trust_arguments(sub.add_parser("trust", help="trust a bundle's native code (TensorRT engines, AOTInductor "
                                                   "packages) on this machine"))
    add_compare_arguments(sub.add_parser("compare", help="compare systems from a score file"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``deramos-rt``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.command == "info":
        return run_cli("deramos-rt", info)
    if args.command == "trust":
        return run_cli("deramos-rt", lambda: run_trust(args))
    if args.command == "compare":
        return run_cli("deramos-rt", lambda: run_compare(args))
    return run_cli("deramos-rt", lambda: score(args))


# ------------------------------------------------------------------------------------------------ score


def _job(args):
    """(the checked job, MusicEval clips or None): input and output checked before any work."""
    from deramos_rt import jobs

    if (args.manifest is None) == (args.musiceval is None):
        raise DeramosError("give either a MANIFEST (or FOLDER) or --musiceval DIR (not both)")
    folder = args.manifest is not None and Path(args.manifest).is_dir()
    if args.prompts is not None and not folder:
        raise DeramosError(f"--prompts {args.prompts} goes with a FOLDER of audio files; a manifest has its own "
                           "'prompt' column and a MusicEval folder its prompt_info.txt")
    if args.musiceval is not None:
        return _musiceval_job(args)
    with step("list folder" if folder else "check manifest") as info:
        job = (jobs.folder_job(args.manifest, args.out, args.prompts) if folder
               else jobs.manifest_job(args.manifest, args.out))
        info["clips"] = job.total
    return job, None


def _musiceval_job(args):
    from deramos_rt import jobs
    from deramos_rt.musiceval import DEMO_PROMPT_FILE, PROMPT_FILE, read_split
    from deramos_rt.pipeline import ClipRequest

    with step(f"read MusicEval {args.split}") as info:
        # Unreadable audio becomes a per-clip error in the output, so files are not pre-checked here.
        clips = read_split(args.musiceval, args.split, check_audio=False)
        root = Path(args.musiceval)
        inputs = (root / "sets" / f"{args.split}_mos_list.txt", root / PROMPT_FILE, root / DEMO_PROMPT_FILE)
        job = jobs.make_job(lambda: (ClipRequest(c.wav_id, str(c.path), c.system_id, c.prompt) for c in clips),
                            len(clips), args.out, inputs)
        info["clips"] = len(clips)
    return job, clips


def score(args: argparse.Namespace) -> int:
    """The ``score`` subcommand."""
    from deramos_rt.jobs import run_job

    if args.ray is not None:
        return score_ray(args)
    job, musiceval = _job(args)
    log.info("versions: %s", versions())
    # The lock is taken before the model is opened, so a second job on this output refuses at once.
    with job.locked(), _open_scorer(args) as scorer, step("score") as info:
        report = run_job(scorer, job, resume=args.resume, probs=args.probs, overwrite=args.overwrite,
                         progress_stream=sys.stderr)
        info.update(clips=job.total - report.skipped, skipped=report.skipped, failed=report.failed,
                    clips_per_s=f"{(job.total - report.skipped) / max(report.seconds, 1e-9):.1f}")
    rate = report.scored / report.seconds if report.seconds > 0 else 0.0
    log.info("scored %d, failed %d (error in the output), resumed past %d, prompts truncated %d; %.1f scored/s",
             report.scored, report.failed, report.skipped, report.prompts_truncated, rate)
    if report.summary is None:
        print(f"wrote {report.out} (complete); the per-system summary was not written: {report.summary_error}")
    else:
        print(f"wrote {report.out} and {report.summary}")
    if musiceval is not None:
        print_musiceval_metrics(report.out, musiceval)
    if args.report:
        _report(args)
    return report.exit_code


def _open_scorer(args):
    from deramos_rt.scorer import Scorer

    with step("open backend") as info:
        scorer = Scorer(args.bundle, backend=args.backend, device=args.device, batch_size=args.batch_size,
                        decode_workers=args.decode_workers, long_audio=args.long_audio, precision=args.precision,
                        threads=args.threads, trust_bundle=args.trust_bundle)
        backend = scorer.backend.info
        info.update(backend=backend.name, precision=backend.precision, device=backend.device)
    log.info("backend detail: %s; model %s; batch %d", backend.detail, scorer.source.identity, scorer.batch_size)
    return scorer


def print_musiceval_metrics(out: Path, clips) -> dict:
    """Utterance- and system-level MSE / LCC / SRCC / KTAU of the scored clips against their labels."""
    from deramos_rt.metrics import mos_metrics
    from deramos_rt.scorefile import read_rows

    labels = {c.wav_id: c for c in clips}
    results = {}
    for dim in ("mi", "ta"):
        pred, true, systems = [], [], []
        for row in read_rows(out):
            value = row.get(dim)
            if value not in (None, "") and row["id"] in labels:
                clip = labels[row["id"]]
                pred.append(float(value)), true.append(getattr(clip, dim)), systems.append(clip.system_id)
        results[dim] = metrics = mos_metrics(pred, true, systems)
        for level in ("utterance", "system"):
            m = metrics[level]
            print(f"{dim.upper()} {level:9s} n={len(pred) if level == 'utterance' else len(set(systems)):4d} "
                  f"MSE {m['MSE']:.4f}  LCC {m['LCC']:.4f}  SRCC {m['SRCC']:.4f}  KTAU {m['KTAU']:.4f}")
    return results


def score_ray(args: argparse.Namespace) -> int:
    """``score --ray``: the manifest on Ray Data (see ``deramos_rt.distributed``); --out is a folder."""
    from deramos_rt.distributed import score_dataset

    if args.trust_bundle:
        raise DeramosError("--trust-bundle is not passed to Ray actors: trust the bundle on every node with "
                           "deramos-rt trust BUNDLE instead")
    if args.musiceval is not None or args.manifest is None or Path(args.manifest).is_dir() or args.prompts:
        raise DeramosError("--ray scores a MANIFEST, given before --ray (deramos-rt score MANIFEST --out DIR --ray "
                           "[ADDRESS]); --musiceval and folders are not supported with --ray")
    with step("score on Ray") as info:
        job = score_dataset(args.manifest, args.out, bundle=args.bundle, actors=args.actors,
                            gpus_per_actor=args.gpus_per_actor, cpus_per_actor=args.cpus_per_actor,
                            address=args.ray or None, backend=args.backend, device=args.device,
                            precision=args.precision, batch_size=args.batch_size, threads=args.threads,
                            long_audio=args.long_audio, probs=args.probs, file_format=args.format,
                            resume=args.resume, overwrite=args.overwrite, report=args.report)
        info.update(clips=job.total - job.skipped, skipped=job.skipped, failed=job.failed,
                    clips_per_s=f"{(job.total - job.skipped) / max(job.seconds, 1e-9):.1f}")
    print(f"wrote {job.scores}/ and {job.summary}" + (f" and {job.report}" if job.report else ""))
    return job.exit_code


def _report(args: argparse.Namespace) -> None:
    """``--report DIR``: run the comparison on the finished score file."""
    parser = argparse.ArgumentParser(prog="deramos-rt compare")
    add_compare_arguments(parser)
    argv = [str(args.out), "--out", str(args.report)]
    if args.musiceval:
        argv += ["--musiceval", str(args.musiceval), "--split", args.split]
    with step("report"):
        run_compare(parser.parse_args(argv))


# ---------------------------------------------------------------------------------------------- compare


def add_compare_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``compare`` arguments to a (sub)parser."""
    from deramos_rt.compare import AUTO_ALL_SYSTEMS

    parser.add_argument("scores", help="score file of `deramos-rt score` (.csv or .jsonl) or a "
                        "predictions_<split>.csv of training.evaluate")
    parser.add_argument("--out", required=True, help="report folder (report.html, report.md, results.json)")
    parser.add_argument("--labels", default=None, help="human MOS list 'wavID,MI,TA' (MusicEval format)")
    parser.add_argument("--musiceval", default=None, help="MusicEval-layout folder (labels from --split)")
    parser.add_argument("--split", default=None, choices=["train", "dev", "test"],
                        help="split of --musiceval whose labels to use")
    parser.add_argument("--baseline", default=None, help="compare each system with this one only")
    parser.add_argument("--pairs", default="auto", type=_pairs_argument, metavar="auto|all|best|N",
                        help=f"which pairs: all (every pair), best (each system against the highest mean), N "
                        f"(all pairs among the N highest means, the rest against the best); auto (default): "
                        f"all up to {AUTO_ALL_SYSTEMS} systems, else best")
    parser.add_argument("--metric", default="mi,ta", help="comma-separated: mi, ta or mi,ta")
    parser.add_argument("--resamples", type=int, default=10000,
                        help="bootstrap resamples; each permutation test draws at least as many permutations "
                        "(more when many pairs share the correction)")
    parser.add_argument("--seed", type=int, default=0)


def _pairs_argument(text: str):
    from deramos_rt.compare import PAIR_MODES

    text = text.strip().lower()
    if text in PAIR_MODES:
        return text
    if text.isdigit() and int(text) >= 1:
        return int(text)
    raise argparse.ArgumentTypeError(f"expected {', '.join(PAIR_MODES)} or a number of top systems, got {text!r}")


def _print_verdicts(results: dict, metric: str) -> None:
    from deramos_rt.compare import MAX_PRINTED_VERDICTS, NO_DIFFERENCE

    found = [p for p in results["pairs"].get(metric, []) if p["verdict"] != NO_DIFFERENCE]
    for pair in found[:MAX_PRINTED_VERDICTS]:
        print(f"{metric.upper()}: {pair['verdict']} (diff {pair['diff']:+.3f}, Holm p {pair['p_holm']:.3g})")
    if len(found) > MAX_PRINTED_VERDICTS:
        print(f"{metric.upper()}: ... and {len(found) - MAX_PRINTED_VERDICTS} more verdicts in report.md")


def run_compare(args: argparse.Namespace) -> int:
    """Run ``compare`` from parsed arguments; write the report; return the exit code."""
    from deramos_rt.compare import compare, musiceval_labels
    from deramos_rt.compare_report import write_report

    labels = args.labels
    if args.musiceval is not None or args.split is not None:
        if labels is not None or args.musiceval is None or args.split is None:
            raise DeramosError("give either --labels FILE or both --musiceval DIR and --split S")
        labels = musiceval_labels(args.musiceval, args.split)
    metrics = tuple(m.strip().lower() for m in args.metric.split(",") if m.strip())
    results = compare(args.scores, labels=labels, baseline=args.baseline, metrics=metrics,
                      resamples=args.resamples, seed=args.seed, pairs=args.pairs)
    log.info("writing the report to %s", args.out)
    paths = write_report(results, args.out, Path(args.scores).parent)
    for metric in metrics:
        _print_verdicts(results, metric)
        if metric in results["power"]:
            print(results["power"][metric]["line"])
    print("wrote " + ", ".join(str(p) for p in paths))
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ trust


def add_trust_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``deramos-rt trust`` subcommand's arguments."""
    parser.add_argument("bundle", help="bundle folder to trust (every file is hash-checked first)")
    parser.add_argument("--remove", action="store_true", help="remove the bundle from the trust store instead")


def run_trust(args: argparse.Namespace) -> int:
    """``deramos-rt trust BUNDLE [--remove]``: print the sha256 trusted (or removed) and what that allows."""
    from deramos_rt.bundle import load_bundle
    from deramos_rt.trust import native_summary, store_path, trust, untrust

    bundle = load_bundle(args.bundle)
    if args.remove:
        found = untrust(bundle.sha256)
        print(f"{'removed' if found else 'was not trusted'}: bundle {bundle.root} (manifest sha256 {bundle.sha256})"
              f"; store {store_path()}")
        return EXIT_OK
    trust(bundle)
    print(f"trusted bundle {bundle.root}: manifest sha256 {bundle.sha256} (store {store_path()}). It has "
          f"{native_summary(bundle.manifest)}; the tensorrt and aoti backends (and auto) may now load its native "
          "code on this machine. Any change to any of its files makes it a different, untrusted bundle.")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------- info


def _version(module: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(module)
    except metadata.PackageNotFoundError:
        return "not installed"


def info() -> int:
    """The ``info`` subcommand: what can run here, and what is missing for the rest."""
    from deramos_rt import __version__
    from deramos_rt.backends import BACKENDS, missing_packages
    from deramos_rt import models
    from deramos_rt.bundle import is_bundle

    print(f"deramos_rt {__version__}; {versions()}")
    for dist in ("numpy", "soundfile", "soxr", "tokenizers", "onnxruntime", "onnxruntime-gpu", "torch", "tensorrt"):
        print(f"  {dist:16s} {_version(dist)}")
    for name, spec in BACKENDS.items():
        missing = missing_packages(name)
        if missing:
            print(f"backend {name:12s} missing: {', '.join(missing)} (install extra: {spec.extra})")
            continue
        print(f"backend {name:12s} available; {_backend_detail(name)}")
    for name in models.BUILTIN:
        path = models.bundle_path(name)
        state = "built" if is_bundle(path) else f"not built yet: built on first use, or now with python -m deramos_rt.models {name}"
        print(f"built-in model {name!r}: bundle {path} ({state})")
    return EXIT_OK


def _backend_detail(name: str) -> str:
    from deramos_rt.backends import gpu_present, ort_providers

    if name == "onnxruntime":
        providers = ort_providers()
        note = "" if "CUDAExecutionProvider" in providers else " (GPU needs the 'gpu' extra: onnxruntime-gpu)"
        return f"providers: {', '.join(providers)}{note}"
    if name in ("torch", "aoti"):
        import torch

        devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"torch {torch.__version__}; CUDA devices: {', '.join(devices) or 'none'}"
    return f"GPU present: {gpu_present()}"


if __name__ == "__main__":
    sys.exit(main())
