"""Train DeRA-MOS heads on frozen encoders (the paper's protocol by default).

``python -m training.train --data DIR --out RUN_DIR [--recipe NAME] [--seeds 1984,1990,...] [overrides]``

Protocol (the paper's and the authors' released code): AdamW lr 5e-5, weight decay 0.01, batch 24, at
most 100 epochs, seed 1984. Early stopping follows the authors' ``train.py``: the patience counter (15)
resets whenever the dev loss (the KL of CE-Gauss, MI + TA; L1 for scalar heads), or the dev system-level
MI SRCC, or the selection score (utterance MI SRCC + system TA SRCC) / 2 reaches a new best; training
stops after ``patience`` epochs in a row with none of the three improving. The kept checkpoint is the dev
epoch with the best selection score, then reported on test.

Encoder outputs are cached by default (``~/.cache/deramos_rt/features``), so an epoch costs only the
heads. ``RUN_DIR/resume.pt`` is written after every epoch (with the CPU and, on CUDA, the CUDA random
states): rerunning the same command continues an interrupted run where it stopped, with the same result as
an uninterrupted one. A run directory is only ever continued with the same config and the same data;
anything else is refused, naming the difference. A run that fails before its first epoch is saved
removes what it wrote.

``--seeds 1984,1990,1910,1510`` trains the members of an ensemble: one ordinary run per seed,
``RUN_DIR/seed-1984/`` ..., one after another. The encoders are built once and the clips encoded once (into
the feature cache) for all of them; each member's heads are initialised from its own seed, and each member
is resumed or refused exactly as a single run would be (all are checked before any work). A run's heads
are always initialised right after seeding, whatever building its encoders drew from the random
generator, so member ``seed-S`` is the run ``--seed S`` gives on the same encoders.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import shutil
import time
from pathlib import Path

import torch

from deramos_rt.errors import DeramosError
from deramos_rt.console import run_cli, setup_logging, step, versions
from training.cache import DEFAULT_CACHE
from training.config import LOSS_KINDS, RunConfig, list_recipes, load_recipe

log = logging.getLogger(__name__)
RESUME_FILE = "resume.pt"
RUN_FILES = (RESUME_FILE, "model.safetensors", "metrics.json", "config.json")
EARLY_STOP_RULE = ("patience resets when the dev loss, the dev system MI SRCC or the selection score "
                   "improves; the kept epoch has the best selection score")
# Backbones whose random initialisation is a legitimate model (tests, demos); others need real weights.
RANDOM_OK = {"tiny", "spectral"}  # encoders whose weights are random or absent by design


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.train", description="Train DeRA-MOS heads.")
    p.add_argument("--data", required=True, help="MusicEval-layout folder")
    p.add_argument("--out", required=True, help="run directory to write (resumed if it holds an unfinished run)")
    p.add_argument("--recipe", default="dera-mos-code", help=f"named recipe or JSON path; one of {list_recipes()}")
    p.add_argument("--audio-backbone"), p.add_argument("--audio-weights"), p.add_argument("--audio-options")
    p.add_argument("--text-backbone"), p.add_argument("--text-weights"), p.add_argument("--text-options")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the text weights folder)")
    p.add_argument("--loss", choices=LOSS_KINDS,
                   help="distribution (DeRA-MOS), pairwise (the authors' ranking ablation), l1 or pamr")
    p.add_argument("--lambda-balr", type=float), p.add_argument("--lambda-sama", type=float)
    p.add_argument("--sama-map-cos", action="store_true", default=None, help="map the SAMA cosine to [0, 1]")
    p.add_argument("--epochs", type=int), p.add_argument("--batch-size", type=int), p.add_argument("--lr", type=float)
    p.add_argument("--patience", type=int), p.add_argument("--seed", type=int)
    p.add_argument("--seeds", type=parse_seeds, metavar="S1,S2,...",
                   help="train one member run per seed into --out/seed-<S>/ (an ensemble; encoders shared)")
    p.add_argument("--device", help="cpu, cuda, or auto")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=JSON",
                   help="override any config field, e.g. --set model.mi_ff=64 (repeatable)")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE),
                   help="encoder-output cache folder (default: %(default)s; safe to delete, entries are recomputed)")
    p.add_argument("--no-cache", action="store_true", help="run the encoders on every batch")
    p.add_argument("--allow-random-encoders", action="store_true",
                   help="permit real-size encoders without weights (benchmarks only)")
    p.add_argument("--overwrite", action="store_true", help="discard an existing run in --out")
    return p.parse_args(argv)


def parse_seeds(text: str) -> list[int]:
    """``"1984,1990"`` -> [1984, 1990]; at least one, no repeats."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds expects comma-separated integers, got {text!r}") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds needs one or more different seeds, got {text!r}")
    return seeds


def member_plan(args: argparse.Namespace, run_config: RunConfig) -> list[tuple[Path, RunConfig]]:
    """``[(run directory, its config)]``: ``--out`` itself, or with ``--seeds`` one ``--out/seed-<S>`` per seed."""
    out = Path(args.out)
    if not args.seeds:
        return [(out, run_config)]
    if args.seed is not None:
        raise DeramosError("give either --seed (one run) or --seeds (one member run per seed), not both")
    if out.is_file() or any((out / name).exists() for name in RUN_FILES):
        raise DeramosError(f"--out {out} holds a single run; --seeds writes members to {out}/seed-<S>/: "
                           "choose another --out")
    return [(out / f"seed-{seed}", dataclasses.replace(run_config, train=dataclasses.replace(run_config.train, seed=seed)))
            for seed in args.seeds]


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """The recipe with the command-line overrides applied, validated."""
    cfg = load_recipe(args.recipe).to_dict()
    model, loss, train = cfg["model"], cfg["loss"], cfg["train"]
    for side in ("audio", "text"):
        if getattr(args, f"{side}_backbone"):
            model[side] = {"name": getattr(args, f"{side}_backbone"), "options": {}, "weights": None, "tokenizer": None}
        if getattr(args, f"{side}_weights"):
            model[side]["weights"] = getattr(args, f"{side}_weights")
        if getattr(args, f"{side}_options"):
            model[side]["options"] = _json_arg(getattr(args, f"{side}_options"), f"--{side}-options")
    if args.tokenizer:
        model["text"]["tokenizer"] = args.tokenizer
    flags = {("loss", "kind"): args.loss, ("loss", "lambda_balr"): args.lambda_balr,
             ("loss", "lambda_sama"): args.lambda_sama, ("loss", "sama_map_cos_to_unit"): args.sama_map_cos,
             ("train", "epochs"): args.epochs, ("train", "batch_size"): args.batch_size, ("train", "lr"): args.lr,
             ("train", "patience"): args.patience, ("train", "seed"): args.seed, ("train", "device"): args.device}
    for (section, key), value in flags.items():
        if value is not None:
            cfg[section][key] = value
    for item in args.set:
        _apply_set(cfg, item)
    if loss["kind"] in ("l1", "pamr"):
        model["head"] = "scalar"  # the regression baselines predict one number per dimension
    run_config = RunConfig.from_dict(cfg)
    run_config.loss.validate()
    return run_config


def _json_arg(text: str, flag: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DeramosError(f"{flag} must be JSON, got {text!r} ({exc})") from None


def _apply_set(cfg: dict, item: str) -> None:
    if "=" not in item or "." not in item.split("=", 1)[0]:
        raise DeramosError(f"--set expects SECTION.FIELD=VALUE, got {item!r}")
    path, value = item.split("=", 1)
    *parents, key = path.split(".")
    node = cfg
    for part in parents:
        if not isinstance(node.get(part), dict):
            raise DeramosError(f"--set {item!r}: no config section {part!r}")
        node = node[part]
    try:
        node[key] = json.loads(value)
    except json.JSONDecodeError:
        node[key] = value  # a bare string such as a path


def check_weights(run_config: RunConfig, allow_random: bool) -> None:
    for side in ("audio", "text"):
        cfg = getattr(run_config.model, side)
        size = cfg.options.get("size")
        if not cfg.weights and cfg.name not in RANDOM_OK and size != "tiny" and not allow_random:
            raise DeramosError(
                f"{side} backbone {cfg.name!r} has no weights: pass --{side}-weights PATH (a local copy of the "
                "pretrained model), choose a tiny configuration, or --allow-random-encoders")


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeramosError(f"device {name!r} requested but torch sees no CUDA GPU; use --device cpu")
    return name


class Trainer:
    """One run: epochs over the train split, dev selection, early stopping, resumable state."""

    def __init__(self, model, features, run_config: RunConfig, run_dir: Path, data: str = ""):
        from training.losses import total_loss

        self.model, self.features, self.cfg, self.run_dir = model, features, run_config, run_dir
        self.data = data  # the resolved --data folder: a run is only continued on the same data
        self.total_loss = total_loss
        self.optimizer = torch.optim.AdamW(model.heads.parameters(), lr=run_config.train.lr,
                                           weight_decay=run_config.train.weight_decay)
        self.device = next(model.heads.parameters()).device
        self.state = {"epoch": 0, "best_score": -math.inf, "best_epoch": 0, "bad_epochs": 0,
                      "best_dev_loss": math.inf, "best_sys_mi_srcc": -math.inf, "history": []}
        self.best_heads = {k: v.clone() for k, v in model.heads.state_dict().items()}

    def fit(self, train_clips, dev_clips) -> None:
        t = self.cfg.train
        while self.state["epoch"] < t.epochs and self.state["bad_epochs"] < t.patience:
            epoch = self.state["epoch"] + 1
            start = time.perf_counter()
            loss = self.train_epoch(train_clips, epoch)
            dev, dev_loss = self.dev_metrics(dev_clips)
            self.record(epoch, loss, dev, dev_loss, time.perf_counter() - start)
            self.save_resume()
        stopped = "early stop" if self.state["bad_epochs"] >= t.patience else "epoch limit"
        log.info("training ended at epoch %d (%s); best epoch %d, selection %.4f", self.state["epoch"], stopped,
                 self.state["best_epoch"], self.state["best_score"])

    def train_epoch(self, clips, epoch: int) -> dict[str, float]:
        from tqdm import tqdm

        self.model.train()
        order = torch.randperm(len(clips), generator=torch.Generator().manual_seed(self.cfg.train.seed * 1000 + epoch))
        size, sums, n = self.cfg.train.batch_size, {}, 0
        need_align = self.cfg.loss.kind in ("distribution", "pairwise") and self.cfg.loss.lambda_sama > 0
        bar = tqdm(range(0, len(clips), size), desc=f"epoch {epoch}", leave=False, disable=None)
        for start in bar:
            batch = [clips[i] for i in order[start : start + size].tolist()]
            audio, text, mask = self.features.batch(batch)
            out = self.model.heads(audio, text, mask, return_alignment=need_align)
            target_mi = torch.tensor([c.mi for c in batch], device=audio.device)
            target_ta = torch.tensor([c.ta for c in batch], device=audio.device)
            loss, parts = self.total_loss(out, target_mi, target_ta, self.cfg.loss, self.model.heads.bin_centers)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v * len(batch)
            n += len(batch)
            bar.set_postfix(loss=f"{parts.get('total', loss.item()):.4f}")
        return {k: v / n for k, v in sums.items()}

    def dev_metrics(self, clips) -> tuple[dict, float]:
        """Dev metrics and the dev loss (see :func:`dev_loss`) of the current heads."""
        from training.evaluate import predict, split_metrics

        pred = predict(self.model, self.features, clips, self.cfg.train.batch_size)
        return split_metrics(pred, clips), dev_loss(pred, clips, self.cfg, self.model.heads.bin_centers)

    def record(self, epoch: int, loss: dict, dev: dict, dev_loss_value: float, seconds: float) -> None:
        from training.metrics import selection_score

        score = selection_score(dev["MI"], dev["TA"])
        best = early_stopping_step(self.state, dev_loss_value, dev["MI"]["system"]["SRCC"], score, epoch)
        if best:
            self.best_heads = {k: v.detach().clone() for k, v in self.model.heads.state_dict().items()}
        self.state["epoch"] = epoch
        self.state["history"].append({"epoch": epoch, "seconds": round(seconds, 3), "train_loss": loss,
                                      "dev": dev, "dev_loss": dev_loss_value, "selection": score})
        log.info("epoch %3d  loss %.4f  dev loss %.4f  MI utt SRCC %.3f  MI sys SRCC %.3f  TA sys SRCC %.3f  "
                 "select %.4f%s  patience %d/%d  (%.1f s)", epoch, loss.get("total", float("nan")), dev_loss_value,
                 dev["MI"]["utterance"]["SRCC"], dev["MI"]["system"]["SRCC"], dev["TA"]["system"]["SRCC"], score,
                 "  *best*" if best else "", self.state["bad_epochs"], self.cfg.train.patience, seconds)

    def _config_key(self) -> str:
        return config_key(self.cfg)

    def save_resume(self) -> None:
        payload = {"config": self._config_key(), "data": self.data, "state": json.dumps(self.state),
                   "heads": self.model.heads.state_dict(), "best_heads": self.best_heads,
                   "optimizer": self.optimizer.state_dict(), **rng_states(self.device)}
        tmp = self.run_dir / f".{RESUME_FILE}.tmp"
        torch.save(payload, tmp)
        tmp.replace(self.run_dir / RESUME_FILE)

    def load_resume(self) -> bool:
        payload = read_resume(self.run_dir)
        if payload is None:
            return False
        check_same_run(self.run_dir, payload, self._config_key(), self.data)
        self.model.heads.load_state_dict(payload["heads"])
        self.best_heads = payload["best_heads"]
        self.best_heads = {k: v.to(self.device) for k, v in self.best_heads.items()}
        self.optimizer.load_state_dict(payload["optimizer"])
        restore_rng_states(payload, self.device)
        self.state = json.loads(payload["state"])
        self.state["best_score"] = float(self.state["best_score"])
        self.state.setdefault("best_dev_loss", math.inf)  # resume states written before the authors' rule
        self.state.setdefault("best_sys_mi_srcc", -math.inf)
        log.info("resuming %s after epoch %d (best epoch %d)", self.run_dir, self.state["epoch"], self.state["best_epoch"])
        return True


def early_stopping_step(state: dict, dev_loss_value: float, sys_mi_srcc: float, selection: float, epoch: int) -> bool:
    """Update the early-stopping state with one epoch's dev figures (the authors' rule).

    The patience counter ``bad_epochs`` resets when any of the dev loss (lower is better), the dev
    system-level MI SRCC or the selection score reaches a new best; otherwise it grows by one. Only the
    selection score decides the kept checkpoint. NaN figures never count as an improvement.

    Args:
        state: ``best_score``, ``best_epoch``, ``bad_epochs``, ``best_dev_loss``, ``best_sys_mi_srcc``
            (updated in place).
        dev_loss_value, sys_mi_srcc, selection: this epoch's dev figures.
        epoch: this epoch's number.

    Returns:
        True when this epoch has the best selection score so far (its heads are the ones to keep).
    """
    better_loss = dev_loss_value < state["best_dev_loss"]
    better_mi = sys_mi_srcc > state["best_sys_mi_srcc"]
    better_selection = selection > state["best_score"]
    if better_loss:
        state["best_dev_loss"] = dev_loss_value
    if better_mi:
        state["best_sys_mi_srcc"] = sys_mi_srcc
    if better_selection:
        state.update(best_score=selection, best_epoch=epoch)
    state["bad_epochs"] = 0 if (better_loss or better_mi or better_selection) else state["bad_epochs"] + 1
    return better_selection


def dev_loss(pred: dict, clips, run_config: RunConfig, bin_centers: torch.Tensor) -> float:
    """The dev loss watched by early stopping, a mean over the dev clips.

    Distribution heads: CE-Gauss KL(MI) + KL(TA) (the authors' dev "KL loss"; the ranking and alignment
    terms are left out). Scalar heads: L1(MI) + L1(TA).
    """
    from training.losses import ce_gauss, l1

    mi = torch.tensor([c.mi for c in clips], dtype=torch.float32)
    ta = torch.tensor([c.ta for c in clips], dtype=torch.float32)
    centers = bin_centers.detach().cpu().float()
    if "mi_probs" in pred:
        sigma = run_config.loss.sigma
        value = ce_gauss(torch.from_numpy(pred["mi_probs"]).float(), mi, sigma, centers) + \
            ce_gauss(torch.from_numpy(pred["ta_probs"]).float(), ta, sigma, centers)
    else:
        value = l1(torch.from_numpy(pred["mi"]).float(), mi) + l1(torch.from_numpy(pred["ta"]).float(), ta)
    return float(value)


def rng_states(device: torch.device | str) -> dict:
    """The random states resume.pt keeps: CPU always, every CUDA device's when training on CUDA
    (dropout on CUDA draws from the CUDA generators, not the CPU one)."""
    states = {"rng": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        states["cuda_rng"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(payload: dict, device: torch.device | str) -> None:
    """Restore what :func:`rng_states` saved; the CUDA states only when resuming on CUDA."""
    torch.set_rng_state(payload["rng"])
    if torch.device(device).type != "cuda":
        return
    saved = payload.get("cuda_rng")
    if saved is None:
        log.warning("resume.pt has no CUDA random state (saved on CPU): dropout on CUDA continues from a fresh state")
        return
    if len(saved) != torch.cuda.device_count():
        log.warning("resume.pt has CUDA random states for %d device(s) but %d are visible; restoring the first",
                    len(saved), torch.cuda.device_count())
        torch.cuda.set_rng_state(saved[0])
        return
    torch.cuda.set_rng_state_all(saved)


def config_key(run_config: RunConfig) -> str:
    """The config a run directory may only be continued with (the device may differ; nothing else may)."""
    data = run_config.to_dict()
    data["train"].pop("device")
    return json.dumps(data, sort_keys=True)


def config_differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """``section.field: old -> new`` for every field that differs between two nested config dicts."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b, name = old.get(key), new.get(key), f"{prefix}{key}"
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_differences(a, b, f"{name}.")
        elif a != b:
            out.append(f"{name}: {json.dumps(a)} -> {json.dumps(b)}")
    return out


def read_resume(run_dir: Path) -> dict | None:
    """``RUN_DIR/resume.pt`` (weights_only), or None when there is none.

    Raises:
        DeramosError: the file is truncated, corrupt or not a resume state.
    """
    from training.weights import torch_load_safe

    path = run_dir / RESUME_FILE
    if not path.is_file():
        return None
    hint = "; delete it to start over, or pass --overwrite"
    try:
        payload = torch_load_safe(path, "resume state")
    except DeramosError as exc:
        raise DeramosError(f"{exc}{hint}") from None
    if not isinstance(payload, dict) or not {"config", "state", "heads", "rng"} <= set(payload):
        raise DeramosError(f"{path} is not a training resume state{hint}")
    return payload


def check_same_run(run_dir: Path, payload: dict, key: str, data: str, ignore: tuple[str, ...] = ()) -> None:
    """Refuse to continue a run with another config or other data, naming every difference.

    Args:
        ignore: dotted fields left out of the comparison (e.g. encoder widths not known yet).
    """
    differences = [d for d in config_differences(json.loads(payload["config"]), json.loads(key))
                   if not d.startswith(ignore)]
    if payload.get("data", data) != data:
        differences.insert(0, f"--data: {payload['data']} -> {data}")
    if differences:
        raise DeramosError(f"{run_dir} holds a run with a different config ({'; '.join(differences)}); "
                           "rerun with the same settings to continue it, or use another --out or --overwrite")


def check_run_dir(run_dir: Path, run_config: RunConfig, data: str, overwrite: bool) -> None:
    """Before any work: refuse a run directory this command must not continue (unless --overwrite)."""
    if overwrite or not run_dir.exists():
        return
    if run_dir.is_file():
        raise DeramosError(f"--out {run_dir} is a file; name a folder")
    payload = read_resume(run_dir)
    if payload is None:
        found = [name for name in RUN_FILES if (run_dir / name).exists()]
        if found:
            raise DeramosError(f"{run_dir} holds a run without resume state ({', '.join(found)}); "
                               "use another --out, or --overwrite to replace it")
        return
    # Encoder widths are filled in when the model is built; compare everything else now.
    check_same_run(run_dir, payload, config_key(run_config), data, ignore=("model.audio_dim", "model.text_dim"))


def prepare_run_dir(run_dir: Path, overwrite: bool) -> bool:
    """Create the run directory (or clear a run in it with --overwrite); True when it was created."""
    created = not run_dir.exists()
    if overwrite and not created:
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return created


def remove_unfinished(run_dir: Path, created: bool, wrote_config: bool) -> None:
    """After a failure before the first saved epoch: remove what this command wrote."""
    if (run_dir / RESUME_FILE).exists():
        return  # finished epochs are kept: rerunning the command resumes them
    (run_dir / f".{RESUME_FILE}.tmp").unlink(missing_ok=True)
    if wrote_config:
        (run_dir / "config.json").unlink(missing_ok=True)
    if created and run_dir.is_dir() and not any(run_dir.iterdir()):
        shutil.rmtree(run_dir)
        log.info("removed %s (nothing was finished in it)", run_dir)


def train(args: argparse.Namespace) -> int:
    from training.cache import Features
    from training.data import SPLITS, Corpus
    from training.model import build_model, build_tokenizer

    run_config = resolve_config(args)
    check_weights(run_config, args.allow_random_encoders)
    run_config.train.device = pick_device(run_config.train.device)
    data = str(Path(args.data).resolve())
    plan = member_plan(args, run_config)
    for run_dir, member_config in plan:
        check_run_dir(run_dir, member_config, data, args.overwrite)
    log.info("versions: %s", versions())
    with step("read data", log) as info:
        corpus = Corpus.open(args.data)
        splits = {s: corpus.read_split(s) for s in SPLITS if s != "test" or corpus.list_path(s).is_file()}
        info.update({s: len(c) for s, c in splits.items()})
    with step("build model", log) as info:
        torch.manual_seed(plan[0][1].train.seed)
        encoders = build_model(run_config.model).to(run_config.train.device)  # its heads are not used
        tokenizer = build_tokenizer(encoders)
        info["head_params"] = f"{sum(p.numel() for p in encoders.heads.parameters()):,}"
        info["encoders"] = f"{run_config.model.audio.name}+{run_config.model.text.name}"
        info["resampler"] = run_config.model.resampler
    features = Features(encoders, tokenizer, None if args.no_cache else args.cache_dir)
    with step("encode clips into the cache" if not args.no_cache else "skip cache (--no-cache)", log) as info:
        info.update(features.prepare([c for clips in splits.values() for c in clips]))
    if args.no_cache and len(plan) > 1:
        log.warning("--no-cache: every member runs the encoders again on every batch (the cache is what lets "
                    "members share one encoder pass)")
    for run_dir, member_config in plan:
        with step(f"member {run_dir.name}" if args.seeds else f"run {run_dir.name}", log):
            train_member(encoders, features, splits, member_config, run_dir, data, args.overwrite)
    return 0


def train_member(encoders, features, splits: dict, run_config: RunConfig, run_dir: Path, data: str,
                 overwrite: bool) -> int:
    """Train one run on the shared encoders and features: fresh heads from the run's seed, resumed if saved."""
    from training.model import DeraMos

    torch.manual_seed(run_config.train.seed)
    model = DeraMos(run_config.model, encoders.audio_encoder, encoders.text_encoder).to(run_config.train.device)
    created = prepare_run_dir(run_dir, overwrite)
    wrote_config = False
    try:
        trainer = Trainer(model, features, run_config, run_dir, data)
        trainer.load_resume()
        run_config.to_json(run_dir / "config.json")
        wrote_config = True
        return finish(trainer, model, features, splits, run_config, run_dir, data)
    except BaseException:
        remove_unfinished(run_dir, created, wrote_config)
        raise


def finish(trainer: Trainer, model, features, splits: dict, run_config: RunConfig, run_dir: Path, data: str) -> int:
    """Train to the end, keep the best epoch, write model.safetensors and metrics.json."""
    from training.checkpoint import save_run_model, write_json
    from training.evaluate import format_metrics, predict, split_metrics

    with step("train", log) as info:
        trainer.fit(splits["train"], splits["dev"])
        info["epochs"] = trainer.state["epoch"]
    model.heads.load_state_dict(trainer.best_heads)
    save_run_model(model, run_dir)
    metrics = {"data": data, "best_epoch": trainer.state["best_epoch"], "selection": trainer.state["best_score"],
               "selection_rule": "(utterance MI SRCC + system TA SRCC) / 2 on dev",
               "early_stopping_rule": EARLY_STOP_RULE, "epochs_run": trainer.state["epoch"]}
    for split in ("dev", "test"):
        if split in splits:
            metrics[split] = split_metrics(predict(model, features, splits[split], run_config.train.batch_size), splits[split])
            print(f"{split} (best epoch {trainer.state['best_epoch']}):\n{format_metrics(metrics[split])}")
    metrics["history"] = trainer.state["history"]
    write_json(run_dir / "metrics.json", metrics)
    log.info("wrote %s (model.safetensors, config.json, metrics.json)", run_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    return run_cli("training.train", lambda: train(args))


if __name__ == "__main__":
    raise SystemExit(main())
