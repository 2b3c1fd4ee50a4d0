"""The GPU benchmark (``benchmarks/gpu_run.sh`` runs it): every part in its own try/except, results written
to OUT/results.json after each measurement and OUT/report.md at the end of each part.

``python -m benchmarks.gpu_bench --out DIR [--dry-run] [--budget-s 240]``

Clips: 512 files of 30 s 44.1 kHz stereo 16-bit FLAC (and 64 of 10 s for the decode table) written locally
first, in parallel. Models (random weights: the cost does not depend on their values):

* ``muq-roberta``: the paper's MuQ-large + RoBERTa-base (recipe ``dera-mos-code``, torchaudio protocol),
  tokenizer from :func:`benchmarks.models.write_roberta_tokenizer`.
* ``default``: the built-in model's architecture (``deramos_rt/model_data/default/config.json``, soxr
  protocol) with the MiniLM text encoder rebuilt as a BERT of MiniLM-L6's shape (6 layers, 384 wide, 30,522
  tokens) with RANDOM weights, because the MiniLM package cannot be carried to the GPU machine; its
  tokenizer is a WordPiece over the tiny vocabulary padded to 30,522 entries.

Measured per model: model-only clips/s (audio + TA graphs on prepared waveforms; bf16 at several batch
sizes, fp32 and fp16 at one): eager, CUDA graphs (the torch backend's own ``GraphedAudio``) and
``torch.compile``; the research-code reference (batch 1 fp32, file decoded on the main thread, prompt
re-encoded per clip); the Scorer end to end from the files (torch backend, bf16, batches prepared and
resampled on the GPU, CUDA graphs, overlapped batches) with 4 / 8 / 12 / 16 decode workers, the GPU's busy
fraction sampled meanwhile, one row with the resampling left in the decode workers (the old data path) and,
with time left, one with ``DERAMOS_TORCH_COMPILE=1``; plus the decode-only table
(``benchmarks.decode_scaling``) and the GEMM rates. Targets: end to end >= 90 % of the best model-only
rate and GPU busy >= 80 % (MuQ), decode N workers >= 0.8 x N one worker.
``--dry-run`` runs the same code on the CPU with tiny models and sizes (a check of the script's logic; the
end-to-end rows then take the device path on torch's CPU device).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
MINILM_SHAPE = dict(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                    intermediate_size=1536, max_position_embeddings=512, type_vocab_size=2, pad_token_id=0)
E2E_WORKERS = (4, 8, 12, 16)
E2E_TARGET, BUSY_TARGET = 0.9, 80.0


def log(message: str) -> None:
    print(f"[gpu {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Run:
    """Results, the output folder, the device, the clips and the time budget."""

    def __init__(self, out: Path, dry: bool, budget_s: float):
        self.out, self.dry, self.deadline = out, dry, time.perf_counter() + budget_s
        self.device = "cpu" if dry else "cuda"
        self.results: dict = {"dry_run": dry, "parts": {}, "errors": {}, "not_available": {}}
        out.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="deramos-gpu-"))
        self.files: dict[float, list[Path]] = {}

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def save(self) -> None:
        (self.out / "results.json").write_text(json.dumps(self.results, indent=1, default=str) + "\n")

    def part(self, name: str, fn, *args) -> None:
        if self.left() < 20:
            self.results["errors"][name] = "skipped: time budget spent"
            log(f"{name}: skipped (budget)")
            self.save()
            return
        log(f"{name}: start ({self.left():.0f} s left)")
        start = time.perf_counter()
        try:
            fn(self, *args)
        except Exception as exc:  # every part is independent: record and go on
            self.results["errors"][name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
        self.results["parts"][name] = round(time.perf_counter() - start, 1)
        self.save()
        write_report(self)
        log(f"{name}: done in {self.results['parts'][name]} s")


# ------------------------------------------------------------------------------------------------ helpers

def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int) -> float:
    """Seconds per call after one warm-up call."""
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    sync(device)
    return (time.perf_counter() - start) / repeats


def autocast(device: str, precision: str):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.split(":")[0], dtype=dtype or torch.float32, enabled=dtype is not None)


class BusySampler:
    """Samples the GPU's utilisation (percent of time a kernel ran) every ``period`` seconds in a thread."""

    def __init__(self, period: float = 0.05):
        self.period, self.samples, self._stop = period, [], threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        while not self._stop.is_set():
            try:
                self.samples.append(float(torch.cuda.utilization()))
            except Exception:  # no NVML: nothing to sample
                return
            time.sleep(self.period)

    def __enter__(self):
        if torch.cuda.is_available():
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def mean(self) -> float | None:
        return round(float(np.mean(self.samples)), 1) if self.samples else None


# ------------------------------------------------------------------------------------------------ models

def minilm_shaped_folder(folder: Path, dry: bool) -> Path:
    """A BERT config of MiniLM-L6's shape and a vocab.txt of its size (tiny vocabulary + fillers)."""
    from deramos_rt.text import tiny_vocab

    folder.mkdir(parents=True, exist_ok=True)
    shape = dict(MINILM_SHAPE)
    if dry:
        shape.update(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"], **shape}))
    vocab = tiny_vocab()
    vocab += [f"[unused{i}]" for i in range(shape["vocab_size"] - len(vocab))]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return folder


def make_run(run: Run, name: str):
    """A run directory with random weights for ``name`` (``muq-roberta`` or ``default``) and its model."""
    from benchmarks.models import write_roberta_tokenizer
    from training.checkpoint import save_run_model
    from training.config import RunConfig, load_recipe
    from training.model import build_model

    run_dir = run.work / f"{name}-run"
    run_dir.mkdir(parents=True, exist_ok=True)
    if name == "muq-roberta":
        config = load_recipe("dera-mos-code")
        if run.dry:
            config.model.audio.options = {"size": "tiny", "clip_seconds": 2.0}
            config.model.text.options = {"size": "tiny"}
            config.model.text.tokenizer = "tiny"
        else:
            write_roberta_tokenizer(run_dir / "tokenizer")
            config.model.text.tokenizer = str(run_dir / "tokenizer")
    else:
        config = RunConfig.from_json(REPO / "deramos_rt" / "model_data" / "default" / "config.json")
        folder = minilm_shaped_folder(run_dir / "minilm-shaped", run.dry)
        config.model.text.name, config.model.text.weights = "bert", None
        config.model.text.options = {"config_dir": str(folder)}
        config.model.text.tokenizer = str(folder)
        config.model.text_dim = None
    config.model.audio_dim = None if name == "muq-roberta" else config.model.audio_dim
    torch.manual_seed(0)
    model = build_model(config.model, load_weights=False)
    save_run_model(model, run_dir)
    RunConfig(model=model.config).to_json(run_dir / "config.json")
    return run_dir, model.eval()


# ------------------------------------------------------------------------------------------------ parts

def part_env(run: Run) -> None:
    import importlib.util

    from deramos_rt.pipeline import available_cores

    env = {"torch": torch.__version__, "python": sys.version.split()[0], "cuda_available": torch.cuda.is_available(),
           "cores": available_cores()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=torch.cuda.get_device_name(), sm_count=props.multi_processor_count,
                   memory_GiB=round(props.total_memory / 2**30, 1), cuda=torch.version.cuda)
    for pkg in ("onnxruntime", "tensorrt", "soundfile", "soxr", "transformers", "triton", "threadpoolctl", "pynvml",
                "onnx"):
        env[pkg] = importlib.util.find_spec(pkg) is not None
    try:
        import onnxruntime

        env["ort_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    run.results["env"] = env
    na = run.results["not_available"]
    if "CUDAExecutionProvider" not in env.get("ort_providers", []):
        na["onnxruntime-cuda"] = (f"onnxruntime here offers {env.get('ort_providers')} (no onnxruntime-gpu): the "
                                  "IOBinding device path (backends/ort_device.py) is tested on the CPU provider only")
        na["onnxruntime-tensorrt"] = "no onnxruntime-gpu with the TensorRT provider here"
    if not env["tensorrt"]:
        na["tensorrt"] = "TensorRT is not installed on this machine (and cannot be carried)"
    if not (env["soundfile"] and env["soxr"] and env["threadpoolctl"]):
        na["end-to-end from files"] = "soundfile / soxr / threadpoolctl missing (carry their wheels in .whl/)"


def part_gemm(run: Run) -> None:
    from benchmarks.gemm import cuda_rates, torch_cpu_rate

    shapes = [(512, 512, 512)] if run.dry else [(8192, 8192, 8192), (32 * 750, 1024, 4096)]
    out = []
    for m, k, n in shapes:
        rates = {"fp32": torch_cpu_rate(m, k, n, min_seconds=0.05)} if run.dry else cuda_rates(m, k, n, 0.3)
        out.append({"m": m, "k": k, "n": n, **{p: round(v, 1) for p, v in rates.items()}})
        log(f"GEMM {m}x{k}x{n}: {out[-1]}")
    run.results["gemm"] = {"shapes": out, "best": {p: max(r[p] for r in out) for p in out[0] if p not in "mkn"}}


def part_files(run: Run) -> None:
    """The clips, written locally: 512 x 30 s and 64 x 10 s of 44.1 kHz stereo FLAC (tiny in the dry run)."""
    from benchmarks.decode_scaling import write_flac_clips

    start = time.perf_counter()
    plan = {3.0: 16, 2.0: 8} if run.dry else {30.0: 512, 10.0: 64}
    for seconds, count in plan.items():
        run.files[seconds] = write_flac_clips(run.work / f"clips-{seconds:g}s", count, seconds)
    total = sum(p.stat().st_size for paths in run.files.values() for p in paths)
    run.results["files"] = {f"{s:g}s": len(p) for s, p in run.files.items()}
    run.results["files"].update(format="FLAC 16-bit, 44.1 kHz stereo", MB=round(total / 1e6, 1),
                                write_s=round(time.perf_counter() - start, 1))


def part_decode(run: Run) -> None:
    """Decode-only clips/s by worker count (threads; one process-pool comparison)."""
    from benchmarks.decode_scaling import decode_table, environment, worker_counts
    from deramos_rt.pipeline import available_cores

    cores = available_cores()
    workers = [1, 2] if run.dry else [w for w in worker_counts(cores) if w <= 16]
    per = 8 if run.dry else 32
    files = {s: paths[:per] for s, paths in run.files.items()}
    rows = decode_table(files, ("torchaudio", "soxr", "native"), workers)
    longest = max(files)
    rows += decode_table({longest: files[longest]}, ("torchaudio",), [1, workers[-1]], ("processes",))
    run.results["decode"] = {"environment": environment(), "rows": rows}


def _audio_fn(module, device: str, precision: str):
    """(B, N) tensor -> the audio part's outputs, under inference mode and autocast."""
    def run(wave):
        with torch.inference_mode(), autocast(device, precision):
            return module(wave)
    return run


def part_model(run: Run, name: str) -> None:
    """Everything measured on one model (each measurement saved as it lands)."""
    res = run.results.setdefault("models", {}).setdefault(name, {})
    run_dir, big = _model_only_rows(run, res, name)  # the model in memory is freed when this returns
    if run.device == "cuda":
        torch.cuda.empty_cache()
    _e2e_rows(run, res, run_dir, big)
    _judge_model(res)


def _model_only_rows(run: Run, res: dict, name: str) -> tuple[Path, int]:
    """Model-only rows (eager, CUDA graphs, compiled) and the reference; returns the run and the big batch."""
    start = time.perf_counter()
    from training.model import build_tokenizer
    from training.split import split_model

    run_dir, model = make_run(run, name)
    model = model.to(run.device)
    audio_part, text_part, ta_part = split_model(model)
    tokenizer = build_tokenizer(model)
    res["build_s"] = round(time.perf_counter() - start, 1)
    protocol = model.audio_protocol
    res["params_M"] = round(sum(p.numel() for p in model.parameters()) / 1e6, 1)
    res["protocol"] = {"rate": protocol.sample_rate, "clip_seconds": protocol.clip_seconds, "resampler": protocol.resampler}
    run.save()
    _flops(run, res, audio_part, text_part, ta_part, tokenizer, protocol)
    tokens = tokenizer(["A calm piano piece with a slow tempo."])
    ids, mask = (torch.from_numpy(a).to(run.device) for a in (tokens.input_ids, tokens.attention_mask))
    with torch.inference_mode():
        text_x = text_part(ids, mask)
    wave_fn = lambda b: 0.1 * torch.randn(b, protocol.num_samples, device=run.device)  # noqa: E731
    big = 2 if run.dry else (32 if name == "muq-roberta" else 128)
    _eager_rows(run, res, name, audio_part, ta_part, text_x, mask, wave_fn)
    model_only = res.setdefault("model_only", {})
    graphs = _audio_fn(audio_part, run.device, "bf16")
    _try(run, model_only, "cuda_graphs_bf16", lambda: _graphed(run, graphs, ta_part, text_x, mask, wave_fn(big)))
    if run.left() > 130 or run.dry:  # compiling MuQ-large took 44 s on an H200: only with time to spare
        _try(run, model_only, "compiled_bf16", lambda: _compiled(run, audio_part, ta_part, text_x, mask, wave_fn(big)))
    else:
        model_only["compiled_bf16"] = "skipped: less than 130 s of the budget left"
    res["best_model_only"] = _best_model_only(res)
    files = run.files[max(run.files)][:4 if run.dry else 8]
    _try(run, res, "reference", lambda: _reference(run, model, tokenizer, files))
    return run_dir, big


def _flops(run: Run, res: dict, audio_part, text_part, ta_part, tokenizer, protocol) -> None:
    from benchmarks import flops

    counted = flops.model_flops(audio_part, text_part, ta_part, tokenizer, protocol.num_samples,
                                "A calm piano piece with a slow tempo.", device=run.device)
    res["gflop_per_clip"] = round(flops.per_clip(counted, 8.0)["total"] / 1e9, 3)
    res["audio_gflop"] = round(counted["audio"]["flops"] / 1e9, 3)


def _eager_rows(run: Run, res: dict, name: str, audio_part, ta_part, text_x, mask, wave_fn) -> None:
    if run.dry:
        plan = [("fp32", 1), ("fp32", 2), ("bf16", 1)]  # autocast on the CPU is slow: the code path only
    elif name == "muq-roberta":
        plan = [("bf16", 8), ("bf16", 32), ("bf16", 64), ("fp32", 32), ("fp16", 32)]
    else:
        plan = [("bf16", 32), ("bf16", 128), ("bf16", 512), ("fp32", 128), ("fp16", 128)]
    eager = res.setdefault("eager", {})
    for precision, batch in plan:
        if run.left() < 90:
            break
        key = f"{precision}_b{batch}"
        try:
            eager[key] = _model_only(run, _audio_fn(audio_part, run.device, precision), ta_part, text_x, mask,
                                     wave_fn(batch), precision)
        except torch.OutOfMemoryError:
            eager[key] = "out of memory"
            torch.cuda.empty_cache()
            continue
        log(f"{name} eager {key}: {eager[key]}")
        run.save()


def _num(res: dict, key: str) -> float | None:
    value = res.get(key)
    return value.get("clips_per_s") if isinstance(value, dict) else None


def _try(run: Run, res: dict, key: str, fn) -> None:
    if run.left() < 40:
        res[key] = "skipped: time budget spent"
        return
    try:
        res[key] = fn()
    except Exception as exc:  # one measurement failing must not lose the rest
        first = (str(exc).strip().splitlines() or [""])[0]
        res[key] = f"failed: {type(exc).__name__}: {first[:300]}"
        traceback.print_exc()
    log(f"{key}: {res[key]}")
    run.save()


def _model_only(run: Run, audio_fn, ta_part, text_x, mask, wave, precision: str) -> dict:
    """Audio + TA graphs on a prepared batch (the prompt encoded once): clips/s and latency."""
    batch = wave.shape[0]
    tx, tm = text_x.expand(batch, -1, -1), mask.expand(batch, -1)

    def step():
        _, audio_x = audio_fn(wave)
        with torch.inference_mode(), autocast(run.device, precision):
            return ta_part(audio_x, tx, tm)

    if run.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(step, run.device, 2 if run.dry else 5)
    out = {"batch": batch, "precision": precision, "clips_per_s": round(batch / seconds, 2),
           "latency_ms": round(seconds * 1000, 2)}
    if run.device == "cuda":
        out["peak_gpu_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def _graphed(run: Run, audio_fn, ta_part, text_x, mask, wave) -> dict:
    """The torch backend's CUDA-graph runner around the audio part (what the Scorer replays)."""
    if run.device != "cuda":
        return {"skipped": "CUDA graphs need a GPU (dry run)"}
    from deramos_rt.backends.torch import GraphedAudio

    graphed = GraphedAudio(torch, audio_fn)
    graphed(wave)
    if graphed.failed:
        raise RuntimeError(graphed.failed)
    return _model_only(run, graphed, ta_part, text_x, mask, wave, "bf16")


def _compiled(run: Run, audio_part, ta_part, text_x, mask, wave) -> dict:
    if run.dry:
        return {"skipped": "torch.compile is measured on the GPU only"}
    start = time.perf_counter()
    compiled = _audio_fn(torch.compile(audio_part, dynamic=False), run.device, "bf16")
    compiled(wave)
    sync(run.device)
    out = _model_only(run, compiled, ta_part, text_x, mask, wave, "bf16")
    out["compile_s"] = round(time.perf_counter() - start, 1)
    return out


def _best_model_only(res: dict) -> dict | None:
    rows = [dict(v, kind=f"eager {k}") for k, v in res.get("eager", {}).items() if isinstance(v, dict)]
    rows += [dict(v, kind=k) for k, v in res.get("model_only", {}).items() if isinstance(v, dict) and "clips_per_s" in v]
    return max(rows, key=lambda r: r["clips_per_s"], default=None)


def _reference(run: Run, model, tokenizer, files: list[Path]) -> dict:
    """The research protocol on the GPU: batch 1 fp32, decode on the main thread, prompt re-encoded per clip."""
    from deramos_rt.audio import load_clip

    protocol = model.audio_protocol
    with torch.inference_mode():
        ids = tokenizer(["warm up"])
        model(torch.zeros(1, protocol.num_samples, device=run.device),
              torch.from_numpy(ids.input_ids).to(run.device), torch.from_numpy(ids.attention_mask).to(run.device))
    sync(run.device)
    start = time.perf_counter()
    for i, path in enumerate(files):
        wave = torch.from_numpy(load_clip(path, protocol))[None].to(run.device)
        tokens = tokenizer([f"prompt number {i % 8}"])
        with torch.inference_mode():
            out = model(wave, torch.from_numpy(tokens.input_ids).to(run.device),
                        torch.from_numpy(tokens.attention_mask).to(run.device))
        float(out["mi"][0])  # the research code reads each score back
    seconds = time.perf_counter() - start
    return {"clips": len(files), "seconds": round(seconds, 3), "clips_per_s": round(len(files) / seconds, 2)}


# ------------------------------------------------------------------------------------------------ end to end

def _e2e_rows(run: Run, res: dict, run_dir: Path, batch: int) -> None:
    """The Scorer from files: 4 / 8 / 12 / 16 decode workers, the host-resampling data path, compiled."""
    from deramos_rt.backends.base import HostStage

    files = run.files[max(run.files)]
    items = [(str(p), f"prompt number {i % 16}") for i, p in enumerate(files)]
    rows = res.setdefault("e2e", {})
    workers = (1, 2) if run.dry else E2E_WORKERS
    with _scorer(run, run_dir, batch) as scorer:
        for n in workers:
            _try(run, rows, f"workers_{n}", lambda: _e2e(run, scorer, items, n, res))
        device_stage = scorer.stage
        scorer.stage = HostStage()  # decode workers resample on the CPU: the data path before issue 21
        _try(run, rows, f"host_resampling_workers_{workers[-1]}", lambda: _e2e(run, scorer, items, workers[-1], res))
        scorer.stage = device_stage
    if run.dry or run.left() < 150:
        rows["compiled"] = "skipped: " + ("the GPU only" if run.dry else "less than 150 s of the budget left")
        return
    os.environ["DERAMOS_TORCH_COMPILE"] = "1"
    try:
        with _scorer(run, run_dir, batch) as scorer:
            _try(run, rows, f"compiled_workers_{workers[-1]}", lambda: _e2e(run, scorer, items, workers[-1], res))
    finally:
        del os.environ["DERAMOS_TORCH_COMPILE"]


class _scorer:
    """A torch-backend Scorer on the run, warmed up (CUDA graph captured, kernels chosen); closed after."""

    def __init__(self, run: Run, run_dir: Path, batch: int):
        from deramos_rt.scorer import Scorer

        self.scorer = Scorer(str(run_dir), backend="torch", device=run.device,
                             precision="fp32" if run.dry else "bf16", batch_size=batch)
        if run.dry:  # the GPU's device path, on torch's CPU device (the same code; no streams)
            from deramos_rt.backends.base import input_stage

            backend = self.scorer.backend
            backend.input_stage = backend.device_path.stage
            self.scorer.stage, self.scorer._overlap = input_stage(backend, self.scorer.protocol), True
        start = time.perf_counter()
        files = run.files[max(run.files)]
        self.scorer.score([(str(p), "warm up") for p in files[:batch]])
        self.warm_s = round(time.perf_counter() - start, 1)

    def __enter__(self):
        from benchmarks.measure import _Timed

        self.scorer.timer = _Timed(self.scorer.backend)
        self.scorer.warm_s = self.warm_s
        return self.scorer

    def __exit__(self, *exc):
        self.scorer.close()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def _e2e(run: Run, scorer, items: list, workers: int, res: dict) -> dict:
    """One timed job: ``workers`` decode workers, each prompt encoded once, the GPU's busy % sampled."""
    from deramos_rt.pipeline import plan_threads

    scorer.threads = plan_threads(workers, None, on_gpu=run.device == "cuda")
    scorer._text.clear()
    timer = scorer.timer
    timer.seconds = dict.fromkeys(timer.seconds, 0.0)
    encoded = int(scorer.counts["prompts_encoded"])
    if run.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with BusySampler() as sampler:
        start = time.perf_counter()
        results = scorer.score(items)
        seconds = time.perf_counter() - start
    errors = [r.error for r in results if r.error]
    best = res.get("best_model_only") or {}
    out = {"clips": len(items), "batch": scorer.batch_size, "workers": workers,
           "backend_threads": scorer.threads.backend_threads, "seconds": round(seconds, 3),
           "clips_per_s": round(len(items) / seconds, 2), "gpu_busy_pct": sampler.mean(),
           "of_best_model_only": round(len(items) / seconds / best["clips_per_s"], 3) if best else None,
           "prompts_encoded": int(scorer.counts["prompts_encoded"]) - encoded, "errors": errors[:2],
           "graph_seconds": {k: round(v, 3) for k, v in timer.seconds.items()},
           "stage": scorer.stage.description, "backend": scorer.backend.info.detail, "warm_up_s": scorer.warm_s}
    if run.device == "cuda":
        out["peak_gpu_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return out


def _judge_model(res: dict) -> None:
    """The GPU targets on the best end-to-end row: >= 90 % of the best model-only rate, GPU busy >= 80 %."""
    rows = [r for r in res.get("e2e", {}).values() if isinstance(r, dict)]
    best = max(rows, key=lambda r: r["clips_per_s"], default=None)
    if not best or not best.get("of_best_model_only"):
        return
    res["targets"] = {"e2e_of_best_model_only": {"value": best["of_best_model_only"], "target": E2E_TARGET,
                                                 "met": best["of_best_model_only"] >= E2E_TARGET,
                                                 "row_workers": best["workers"]},
                      "gpu_busy_pct": {"value": best.get("gpu_busy_pct"), "target": BUSY_TARGET,
                                       "met": None if best.get("gpu_busy_pct") is None
                                       else best["gpu_busy_pct"] >= BUSY_TARGET}}
    if res.get("reference", {}) and _num(res, "reference"):
        res["e2e_over_reference"] = round(best["clips_per_s"] / res["reference"]["clips_per_s"], 1)


# ------------------------------------------------------------------------------------------------ report

def write_report(run: Run) -> None:
    r = run.results
    lines = ["# deramos_rt GPU benchmark", "", f"Dry run (CPU, tiny models): {r['dry_run']}", "",
             f"Environment: `{json.dumps(r.get('env', {}))}`", ""]
    if r.get("files"):
        lines += [f"Clips: `{json.dumps(r['files'])}`", ""]
    if r.get("gemm"):
        lines += ["GEMM rates (GFLOP/s): " + "; ".join(json.dumps(s) for s in r["gemm"]["shapes"]), ""]
    for name, res in r.get("models", {}).items():
        lines += _model_report(name, res)
    if r.get("decode"):
        from benchmarks.decode_scaling import markdown

        env = r["decode"]["environment"]
        lines += ["## Decode only (decode workers, no model)", "", markdown(r["decode"]["rows"]), "",
                  f"{env['cores']} cores ({env['cpu']}); BLAS in the decode workers: "
                  f"`{json.dumps(env['blas_in_decode_workers'])}`; load {env['load_avg']}", ""]
    if r.get("not_available"):
        lines += ["## Not available here", ""] + [f"- {k}: {v}" for k, v in r["not_available"].items()] + [""]
    if r.get("errors"):
        lines += ["## Errors", ""] + [f"- {k}: {v}" for k, v in r["errors"].items()] + [""]
    lines.append(f"Part times (s): `{json.dumps(r.get('parts', {}))}`")
    (run.out / "report.md").write_text("\n".join(lines) + "\n")


def _model_report(name: str, res: dict) -> list[str]:
    lines = [f"## {name}", "", f"{res.get('params_M')} M parameters, {res.get('gflop_per_clip')} GFLOP per clip "
             f"(text amortised over 8 clips per prompt), protocol `{json.dumps(res.get('protocol'))}`; random weights"
             + ("; MiniLM-shaped BERT with random weights as the text encoder" if name == "default" else ""), "",
             "| model only (audio + TA) | batch | clips/s | latency ms | peak GPU GiB |", "|---|---|---|---|---|"]
    rows = [(f"eager {k}", v) for k, v in res.get("eager", {}).items()]
    rows += list(res.get("model_only", {}).items())
    for key, v in rows:
        if isinstance(v, dict) and "clips_per_s" in v:
            lines.append(f"| {key} | {v['batch']} | {v['clips_per_s']} | {v['latency_ms']} | {v.get('peak_gpu_GiB', '-')} |")
        else:
            lines.append(f"| {key} | {v} | | | |")
    lines += ["", "| end to end from files | workers | clips/s | of best model-only | GPU busy % | graph s (audio / text / ta) |",
              "|---|---|---|---|---|---|"]
    for key, v in res.get("e2e", {}).items():
        if isinstance(v, dict):
            g = v["graph_seconds"]
            lines.append(f"| {key} | {v['workers']} | {v['clips_per_s']} | {v['of_best_model_only']} | "
                         f"{v['gpu_busy_pct']} | {g['audio']} / {g['text']} / {g['ta']} |")
        else:
            lines.append(f"| {key} | {v} | | | | |")
    best = res.get("best_model_only")
    lines += ["", f"- best model-only: `{json.dumps(best)}`" if best else "- best model-only: none measured"]
    for key in ("reference", "e2e_over_reference"):
        if key in res:
            lines.append(f"- {key}: `{json.dumps(res[key])}`")
    for key, t in res.get("targets", {}).items():
        verdict = "-" if t["met"] is None else ("**met**" if t["met"] else "**not met**")
        lines.append(f"- target {key} >= {t['target']}: {verdict} ({t['value']})")
    e2e = next((v for v in res.get("e2e", {}).values() if isinstance(v, dict)), None)
    if e2e:
        lines.append(f"- data path: {e2e['stage']}; backend: {e2e['backend']}")
    return lines + [""]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_bench", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny models: checks the script's logic")
    p.add_argument("--budget-s", type=float, default=240)
    p.add_argument("--models", default="muq-roberta,default")
    args = p.parse_args(argv)
    dry = args.dry_run or not torch.cuda.is_available()
    if dry and not args.dry_run:
        log("no CUDA GPU: running the dry run (CPU, tiny sizes)")
    run = Run(args.out, dry, args.budget_s)
    try:
        run.part("env", part_env)
        run.part("files", part_files)
        run.part("gemm", part_gemm)
        models = [m.strip() for m in args.models.split(",") if m.strip()]
        # The paper's model first, then the decode table, then the rest with what is left of the budget.
        for name in models[:1] + ["decode"] + models[1:]:
            if run.device == "cuda":
                torch.cuda.empty_cache()
            if name == "decode":
                run.part(name, part_decode)
            else:
                run.part(name, part_model, name)
    finally:
        shutil.rmtree(run.work, ignore_errors=True)
        run.save()
        write_report(run)
    log(f"wrote {run.out / 'results.json'} and report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
