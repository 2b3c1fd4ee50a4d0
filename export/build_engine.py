"""Turn a run directory into a bundle the runtime scores with, without torch.

``python -m export.build_engine --run RUN_DIR [--run RUN_DIR ...] --out BUNDLE_DIR [--precision fp32,int8,fp16]
[--tensorrt auto|require|off] [--opt-batch 16 --max-batch 64] [--aoti [--aoti-device cpu|cuda]]``

Several ``--run`` (or one folder of run directories) make an ensemble bundle: the members must share their
frozen encoders exactly (``training/ensemble.py``), otherwise the build stops with exit 2 and one line
naming what differs, before anything is written; the format is fixed in ``deramos_rt/bundle.py``.

Steps: rebuild the model from the run; export the three graphs of ``training/split.py`` (fp32, simplified
with onnxslim where that keeps the outputs); derive int8 (CPU) and fp16 (GPU) variants; save the
tokenizer; write the manifest; run the parity gate (every variant against the torch model, end to end
from audio files); drop any variant that misses its limit; optionally build TensorRT engines and
AOTInductor packages (``aoti/``, gated like the fp32 graphs, dropped with the reason on failure).
Everything is written into a temporary folder beside ``--out`` and renamed into place at the end (folders
755, files 644), so ``--out`` never holds a half-written bundle.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

from deramos_rt.bundle import GRAPHS, PRECISIONS, is_bundle, load_bundle, write_manifest
from deramos_rt.errors import DeramosError
from deramos_rt.console import run_cli, setup_logging, step

log = logging.getLogger(__name__)
TENSORRT_MODES = ("auto", "require", "off")
VARIANT_DEVICE = {"fp32": "any", "int8": "cpu", "fp16": "cuda"}


@dataclasses.dataclass
class BuildOptions:
    """What to build besides the fp32 graphs.

    Attributes:
        precisions: variants to keep (fp32 is always built: the others derive from it and are gated against torch).
        tensorrt: ``auto`` (engines when TensorRT and a GPU are present), ``require`` or ``off``.
        opt_batch, max_batch: the batch profile recorded for TensorRT (min 1).
        aoti: also package the parts with AOTInductor.
        aoti_device: ``cpu`` or ``cuda`` for the packages (None: cuda when torch sees a GPU, else cpu).
        parity_files, parity_random: generated audio files / random signals for the parity gate.
        slim: simplify graphs with onnxslim (kept only where outputs are unchanged).
        slim_large: also simplify graphs above export.optimize.SLIM_MAX_BYTES (1 GB; onnxslim needs many GB).
        int8_min_bytes: encoders with fewer weight bytes stay fp32 in the int8 variant.
    """

    precisions: tuple[str, ...] = ("fp32",)
    tensorrt: str = "off"
    opt_batch: int = 16
    max_batch: int = 64
    aoti: bool = False
    aoti_device: str | None = None
    parity_files: int = 8
    parity_random: int = 24
    slim: bool = True
    slim_large: bool = False
    int8_min_bytes: int = 16_000_000


def parse_precisions(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"fp32,int8"`` -> ("fp32", "int8"); an unknown name is an error."""
    names = [p.strip() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    unknown = [p for p in names if p not in PRECISIONS]
    if unknown or not names:
        raise DeramosError(f"unknown precision {', '.join(unknown) or '(none)'}; choose from: {', '.join(PRECISIONS)}")
    return tuple(dict.fromkeys(names))


def build_bundle(run_dir: str | Path | Sequence[str | Path], out_dir: str | Path,
                 precisions: Sequence[str] = ("fp32",), **options: Any) -> Path:
    """Build a bundle from a run directory (the function tests and setup call).

    Args:
        run_dir: a training run directory (``config.json`` + ``model.safetensors``); a folder of run
            directories or a list of run directories builds an ensemble bundle (one member: a single-model one).
        out_dir: the bundle folder to create (replaced when it already holds a bundle).
        precisions: variants to keep, e.g. ("fp32", "int8").
        **options: further :class:`BuildOptions` fields.

    Returns:
        The bundle folder.

    Raises:
        DeramosError: bad input, or no asked-for variant passed the parity gate.
    """
    opts = BuildOptions(precisions=parse_precisions(precisions), **options)
    _check_options(opts)
    runs, out_dir = resolve_runs(run_dir), Path(out_dir)
    _check_out(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        _build_into(runs, work, opts)
        _publish_modes(work)
        _replace(work, out_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    from deramos_rt.trust import record_built

    record_built(out_dir)  # built here, so its native code may load here (deramos_rt.trust)
    return out_dir


def _check_options(opts: BuildOptions) -> None:
    if opts.tensorrt not in TENSORRT_MODES:
        raise DeramosError(f"--tensorrt must be one of {', '.join(TENSORRT_MODES)}, got {opts.tensorrt!r}")
    if not 1 <= opts.opt_batch <= opts.max_batch:
        raise DeramosError(f"need 1 <= --opt-batch ({opts.opt_batch}) <= --max-batch ({opts.max_batch})")
    if opts.aoti_device is not None:
        if not opts.aoti:
            raise DeramosError("--aoti-device needs --aoti")
        if opts.aoti_device not in ("cpu", "cuda"):
            raise DeramosError(f"--aoti-device must be cpu or cuda, got {opts.aoti_device!r}")
        if opts.aoti_device == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise DeramosError(f"--aoti-device cuda: this torch ({torch.__version__}) sees no CUDA GPU")


def _publish_modes(work: Path) -> None:
    """mkdtemp makes the folder 0700: give the bundle ordinary modes (folders 755, files 644) before it
    becomes visible, so other users and services can read it."""
    work.chmod(0o755)
    for path in work.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def _check_out(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not is_bundle(out_dir))):
        raise DeramosError(f"--out {out_dir} exists and is not a bundle: choose an empty or new folder "
                           "(an existing bundle there is replaced)")


def _replace(work: Path, out_dir: Path) -> None:
    """Move the finished bundle into place; an old bundle there is swapped out, then removed."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
    work.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def resolve_runs(run_dir: str | Path | Sequence[str | Path]) -> list[Path]:
    """The member run directories: one run as given, or every run of a folder of runs / of a list.

    A single path that is not a folder of runs is returned as is, for :func:`load_model`'s messages.
    """
    from training.ensemble import member_runs

    paths = [Path(run_dir)] if isinstance(run_dir, (str, Path)) else [Path(p) for p in run_dir]
    if not paths:
        raise DeramosError("no --run given")
    single = len(paths) == 1 and (not paths[0].is_dir() or (paths[0] / "config.json").is_file()
                                  or not any((p / "config.json").is_file() for p in paths[0].iterdir()))
    return paths if single else member_runs(paths)


def load_model(run_dir: Path):
    """Rebuild the run's model (eval, CPU) and its tokenizer; every failure is one DeramosError."""
    from training.checkpoint import CONFIG_FILE, load_run
    from training.model import build_tokenizer

    if not run_dir.is_dir():
        raise DeramosError(f"--run {run_dir}: no such run directory")
    if not (run_dir / CONFIG_FILE).is_file():
        raise DeramosError(f"--run {run_dir} is not a run directory ({CONFIG_FILE} is missing)")
    try:
        model, run_config = load_run(run_dir)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise DeramosError(f"cannot rebuild the model of run {run_dir}: {exc}") from exc
    return model, run_config, build_tokenizer(model)


def _load(runs: list[Path]):
    """(model, tokenizer): one run's DeraMos, or the members' :class:`training.ensemble.Ensemble`."""
    if len(runs) == 1:
        model, _, tokenizer = load_model(runs[0])
        return model, tokenizer
    from training.ensemble import load_ensemble

    return load_ensemble(runs, load_model)


def _copy_provenance(model, runs: list[Path], work: Path) -> None:
    """A run's provenance.json goes with its bundle; an ensemble keeps each member's as provenance/<name>.json."""
    if len(runs) == 1:
        if (runs[0] / "provenance.json").is_file():
            shutil.copy2(runs[0] / "provenance.json", work / "provenance.json")
        return
    for name, run in zip(model.names, runs):
        if (run / "provenance.json").is_file():
            (work / "provenance").mkdir(exist_ok=True)
            shutil.copy2(run / "provenance.json", work / "provenance" / f"{name}.json")


def _build_into(runs: list[Path], work: Path, opts: BuildOptions) -> None:
    with step("load run" if len(runs) == 1 else f"load {len(runs)} member runs") as info:
        model, tokenizer = _load(runs)
        info["run"] = ",".join(str(r) for r in runs)
    with step("export fp32 graphs") as info:
        variants = {"fp32": _export_fp32(model, work, opts)}
        info["MB"] = _mb(work)
    variants.update(_derive_variants(work, opts))
    tokenizer.save(work / "tokenizer.json")
    _copy_provenance(model, runs, work)
    manifest = _manifest(model, runs, work, tokenizer, variants, opts)
    aoti_failure = None
    if opts.aoti:
        with step("aoti packages") as info:
            manifest["aoti"], aoti_failure = _aoti(model, work, tokenizer, opts)
            info["device"] = (manifest["aoti"] or {}).get("device", "none")
    write_manifest(work, manifest)
    from export import calibrate, quantize

    quantize.tune_int8(model, tokenizer, work, manifest, opts.parity_files, opts.parity_random)
    with step("parity gate") as info:
        parity = _parity(model, tokenizer, work, opts)
        info["kept"] = ",".join(v for v in manifest["variants"] if parity["variants"][v]["kept"])
    if aoti_failure:
        parity["aoti"] = aoti_failure
    _apply_parity(work, manifest, parity, opts)
    with step("tensorrt engines") as info:
        manifest["tensorrt"] = _tensorrt(work, manifest, opts)
        info["engines"] = len(manifest["tensorrt"]) * len(GRAPHS)
    (work / "parity.json").write_text(json.dumps(parity, indent=1) + "\n")
    manifest["calibration"] = calibrate.calibrate(work, manifest)
    write_manifest(work, manifest)


def _export_fp32(model, work: Path, opts: BuildOptions) -> dict[str, Any]:
    from export import graphs, optimize

    paths = graphs.export_parts(model, work, suffix="fp32")
    slimmed, optimized = {}, {}
    for graph, path in paths.items():
        slimmed[graph] = (bool(opts.slim) and optimize.slim_allowed(path, opts.slim_large)
                          and graphs.slim(path, _same_outputs_check(path)))
        optimized[graph] = optimize.optimize_graph(path, _same_outputs_check(path))
    return {"files": {g: p.name for g, p in paths.items()}, "device": VARIANT_DEVICE["fp32"],
            "opset": graphs.OPSET, "slimmed": slimmed, "optimized": optimized}


def _same_outputs_check(reference: Path, tolerance: float = 1e-5):
    """A check for graphs.slim: the candidate's outputs equal the reference's on random inputs of batch 3."""
    def check(candidate: Path) -> str | None:
        import numpy as np
        import onnxruntime as ort

        ref = ort.InferenceSession(str(reference), providers=["CPUExecutionProvider"])
        new = ort.InferenceSession(str(candidate), providers=["CPUExecutionProvider"])
        feed = random_feed(ref)
        for name, a, b in zip([o.name for o in ref.get_outputs()], ref.run(None, feed), new.run(None, feed)):
            scale = max(1.0, float(np.abs(a).max()))
            if a.shape != b.shape or float(np.abs(a - b).max()) > tolerance * scale:
                return f"output {name} differs"
        return None
    return check


def random_feed(session, batch: int = 3, tokens: int = 5, seed: int = 0, max_tokens: int | None = None) -> dict:
    """Seeded random inputs for an ORT session: symbolic ``batch`` / ``tokens`` axes get the sizes given,
    ``tokens`` cut to ``max_tokens`` (a TensorRT profile, or position table, ends there)."""
    from deramos_rt.backends.onnxruntime import probe_feed

    tokens = min(tokens, max_tokens) if max_tokens else tokens
    specs = [(spec.name, spec.type, spec.shape) for spec in session.get_inputs()]
    return probe_feed(specs, {"batch": batch, "tokens": tokens}, seed)


def _derive_variants(work: Path, opts: BuildOptions) -> dict[str, dict[str, Any]]:
    variants = {}
    for precision in opts.precisions:
        if precision == "fp32":
            continue
        from export import quantize

        with step(f"convert to {precision}") as info:
            files = {}
            for g in GRAPHS:
                src, dst = work / f"{g}.fp32.onnx", work / f"{g}.{precision}.onnx"
                made = quantize.to_int8(src, dst, keep_first=g == "audio", min_bytes=opts.int8_min_bytes) \
                    if precision == "int8" else \
                    quantize.to_fp16(src, dst)
                files[g] = made.name
            info["MB"] = _mb(work)
        variants[precision] = {"files": files, "device": VARIANT_DEVICE[precision], "opset": None,
                               "recipe": quantize.RECIPES[precision]}
    return variants


def _manifest(model, runs: list[Path], work: Path, tokenizer, variants, opts: BuildOptions) -> dict:
    from export import graphs

    protocol = model.audio_protocol
    for entry in variants.values():
        entry["opset"] = entry["opset"] or graphs.OPSET
        entry["files_all"] = sorted({p.name for g in GRAPHS for p in graphs.graph_files(work / entry["files"][g])})
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": _model_section(model, runs, work),
        "audio": {"sample_rate": protocol.sample_rate, "clip_seconds": protocol.clip_seconds,
                  "resampler": protocol.resampler, "num_samples": protocol.num_samples},
        "text": {"tokenizer": "tokenizer.json", "max_tokens": tokenizer.max_tokens,
                 "vocab_size": tokenizer.vocab_size, "pad_id": tokenizer.pad_id},
        "graphs": {g: graphs.graph_spec(work / variants["fp32"]["files"][g]) for g in GRAPHS},
        "variants": variants,
        "profile": {"batch": [1, opts.opt_batch, opts.max_batch],
                    "tokens": [1, min(32, tokenizer.max_tokens), tokenizer.max_tokens]},
        "tensorrt": [],
        "aoti": None,
        "versions": _versions(),
        "source": _source(runs, work),
    }


def _model_section(model, runs: list[Path], work: Path) -> dict[str, Any]:
    """The manifest's ``model`` section; an ensemble adds ``members`` (deramos_rt/bundle.py)."""
    config = model.config
    bins = None
    if config.head == "distribution":
        import numpy as np

        bins = [float(b) for b in np.linspace(config.bin_min, config.bin_max, config.num_bins)]
    section = {"head": config.head, "bins": bins,
               "backbones": {k: {"name": getattr(config, k).name, "options": getattr(config, k).options}
                             for k in ("audio", "text")},
               "config": dataclasses.asdict(config)}
    if len(runs) > 1:
        from training.ensemble import member_entry

        section["members"] = []
        for i, run in enumerate(runs):
            entry = member_entry(model, i, run)
            provenance = Path("provenance") / f"{entry['name']}.json"
            entry["provenance"] = provenance.as_posix() if (work / provenance).is_file() else None
            section["members"].append(entry)
    return section


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("deramos_rt", "torch", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxslim", "transformers",
                 "tokenizers", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def _source(runs: list[Path], work: Path) -> dict[str, Any]:
    if len(runs) > 1:  # each member's run, config hash and provenance are in model.members
        return {"runs": [str(r.resolve()) for r in runs], "config_sha256": None, "provenance": None}
    run_dir = runs[0]
    config = run_dir / "config.json"
    return {"run": str(run_dir.resolve()),
            "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest(),
            "provenance": "provenance.json" if (work / "provenance.json").is_file() else None}


def _aoti(model, work: Path, tokenizer, opts: BuildOptions) -> tuple[dict | None, dict | None]:
    """(the manifest's aoti section, None), or (None, the reason) when export or compilation failed."""
    from export import aoti

    device = opts.aoti_device or aoti.default_device()
    try:
        return aoti.build_packages(model, work, device, tokenizer.max_tokens), None
    except Exception as exc:  # torch.export / Inductor raise many types; the ONNX bundle stays usable
        first = (str(exc).strip().splitlines() or [""])[0]
        reason = f"failed: AOTInductor {device} packaging: {type(exc).__name__}: {first}"
        log.warning("dropping the AOTInductor packages: %s", reason)
        shutil.rmtree(work / aoti.FOLDER, ignore_errors=True)
        return None, {"status": reason, "kept": False, "device": device}


def _parity(model, tokenizer, work: Path, opts: BuildOptions) -> dict[str, Any]:
    from export import parity

    return parity.run_gate(model, tokenizer, work, opts.precisions, opts.parity_files, opts.parity_random)


def _apply_parity(work: Path, manifest: dict, parity: dict, opts: BuildOptions) -> None:
    """Drop the variants that missed their limits; an all-failed request is an error."""
    for precision in list(manifest["variants"]):
        result = parity["variants"][precision]
        entry = manifest["variants"][precision]
        entry["parity"] = {k: result[k] for k in ("status", "mi_max_abs", "ta_max_abs", "mi_srcc", "ta_srcc")
                           if k in result}
        if result["kept"]:
            continue
        log.warning("dropping the %s variant: %s", precision, result["status"])
        del manifest["variants"][precision]
        shared = {f for v in manifest["variants"].values() for f in v["files_all"]}
        for name in entry["files_all"]:
            if name not in shared:  # the int8 variant shares the fp32 TA graph
                (work / name).unlink(missing_ok=True)
    aoti = parity.get("aoti")
    if manifest.get("aoti"):
        manifest["aoti"]["parity"] = {k: aoti[k] for k in ("status", "mi_max_abs", "ta_max_abs") if k in aoti}
        if not aoti["kept"]:
            log.warning("dropping the AOTInductor packages: %s", aoti["status"])
            from export.aoti import FOLDER

            shutil.rmtree(work / FOLDER, ignore_errors=True)
            manifest["aoti"] = None
    kept_asked = [p for p in opts.precisions if p in manifest["variants"]]
    if not kept_asked:
        reasons = "; ".join(f"{p}: {parity['variants'][p]['status']}" for p in opts.precisions)
        raise DeramosError(f"no asked-for precision passed the parity gate ({reasons})")


def _tensorrt(work: Path, manifest: dict, opts: BuildOptions) -> list[dict]:
    """Engines (fp16 when asked, else fp32) checked against ONNX Runtime; [] when skipped."""
    from export import tensorrt

    precision = "fp16" if "fp16" in opts.precisions else "fp32"
    entries = tensorrt.build_engines(work, manifest, opts.tensorrt, (precision,))
    if entries:
        write_manifest(work, manifest | {"tensorrt": entries})
        bundle = load_bundle(work)
        import onnxruntime as ort

        feeds = {}
        for graph in GRAPHS:
            session = ort.InferenceSession(str(bundle.graph_path("fp32", graph)), providers=["CPUExecutionProvider"])
            feeds[graph] = random_feed(session, batch=min(3, opts.max_batch), max_tokens=manifest["text"]["max_tokens"])
        entries[0]["check_max_abs"] = tensorrt.check_engines(bundle, precision, feeds)
    return entries


def _mb(path: Path) -> str:
    return f"{sum(p.stat().st_size for p in path.rglob('*') if p.is_file()) / 1e6:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m export.build_engine", description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, type=Path, action="append",
                        help="training run directory; repeat it, or name a folder of runs, for an ensemble")
    parser.add_argument("--out", required=True, type=Path, help="bundle folder to write")
    parser.add_argument("--precision", default="fp32,int8", help="comma list of fp32, int8, fp16 (default fp32,int8)")
    parser.add_argument("--tensorrt", default="auto", help="auto | require | off (default auto)")
    parser.add_argument("--opt-batch", type=int, default=16)
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--aoti", action="store_true", help="also build AOTInductor packages")
    parser.add_argument("--aoti-device", choices=("cpu", "cuda"), default=None,
                        help="device of the AOTInductor packages (default: cuda when torch sees a GPU, else cpu)")
    parser.add_argument("--no-slim", action="store_true", help="do not simplify graphs with onnxslim")
    parser.add_argument("--slim", action="store_true",
                        help="also simplify graphs above 1 GB (onnxslim peaked near 14 GB on MuQ-large's audio graph)")
    parser.add_argument("--parity-files", type=int, default=8, help="generated audio files in the parity gate")
    parser.add_argument("--parity-random", type=int, default=24, help="random signals in the parity gate")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        start = time.perf_counter()
        out = build_bundle(args.run, args.out, parse_precisions(args.precision), tensorrt=args.tensorrt,
                           opt_batch=args.opt_batch, max_batch=args.max_batch, aoti=args.aoti,
                           aoti_device=args.aoti_device,
                           slim=not args.no_slim, slim_large=args.slim, parity_files=args.parity_files,
                           parity_random=args.parity_random)
        bundle = load_bundle(out)
        aoti, members = bundle.manifest.get("aoti"), bundle.members
        log.info("bundle %s: %svariants %s%s, %s MB, built in %.1f s (manifest sha256 %s)", out,
                 f"ensemble of {len(members)} members, " if members else "", ",".join(bundle.variants),
                 f", aoti {aoti['device']}" if aoti else "", _mb(out), time.perf_counter() - start, bundle.sha256[:16])
        return 0

    return run_cli("export.build_engine", body)


if __name__ == "__main__":
    sys.exit(main())
