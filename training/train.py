"""Train DeRA-MOS heads on frozen encoders (the paper's protocol by default).

``python -m training.train --data DIR --out RUN_DIR [--recipe NAME] [overrides]``

Protocol (deramos-spec.md): AdamW lr 5e-5, weight decay 0.01, batch 24, at most 100 epochs, early stop
after 15 epochs without improvement, seed 1984; the kept checkpoint is the dev epoch with the best
(utterance MI SRCC + system TA SRCC) / 2, then reported on test. Encoder outputs are cached by default,
so an epoch costs only the heads. ``RUN_DIR/resume.pt`` is written after every epoch: rerunning the same
command continues an interrupted run where it stopped, with the same result as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import torch

from deramos_rt.errors import DeramosError
from deramos_rt.report import run_cli, setup_logging, step, versions
from training.config import RunConfig, list_recipes, load_recipe

log = logging.getLogger("deramos.train")
RESUME_FILE = "resume.pt"
DEFAULT_CACHE = Path.home() / ".cache" / "deramos_rt" / "features"
# Backbones whose random initialisation is a legitimate model (tests, demos); others need real weights.
RANDOM_OK = {"tiny"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.train", description="Train DeRA-MOS heads.")
    p.add_argument("--data", required=True, help="MusicEval-layout folder")
    p.add_argument("--out", required=True, help="run directory to write (resumed if it holds an unfinished run)")
    p.add_argument("--recipe", default="dera-mos-code", help=f"named recipe or JSON path; one of {list_recipes()}")
    p.add_argument("--audio-backbone"), p.add_argument("--audio-weights"), p.add_argument("--audio-options")
    p.add_argument("--text-backbone"), p.add_argument("--text-weights"), p.add_argument("--text-options")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the text weights folder)")
    p.add_argument("--loss", choices=["distribution", "l1", "pamr"])
    p.add_argument("--lambda-balr", type=float), p.add_argument("--lambda-sama", type=float)
    p.add_argument("--sama-map-cos", action="store_true", default=None, help="map the SAMA cosine to [0, 1]")
    p.add_argument("--epochs", type=int), p.add_argument("--batch-size", type=int), p.add_argument("--lr", type=float)
    p.add_argument("--patience", type=int), p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu, cuda, or auto")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=JSON",
                   help="override any config field, e.g. --set model.mi_ff=64 (repeatable)")
    p.add_argument("--cache-dir", default=str(DEFAULT_CACHE), help="encoder-output cache folder")
    p.add_argument("--no-cache", action="store_true", help="run the encoders on every batch")
    p.add_argument("--allow-random-encoders", action="store_true",
                   help="permit real-size encoders without weights (benchmarks only)")
    p.add_argument("--overwrite", action="store_true", help="discard an existing run in --out")
    return p.parse_args(argv)


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

    def __init__(self, model, features, run_config: RunConfig, run_dir: Path):
        from training.losses import total_loss

        self.model, self.features, self.cfg, self.run_dir = model, features, run_config, run_dir
        self.total_loss = total_loss
        self.optimizer = torch.optim.AdamW(model.heads.parameters(), lr=run_config.train.lr,
                                           weight_decay=run_config.train.weight_decay)
        self.device = next(model.heads.parameters()).device
        self.state = {"epoch": 0, "best_score": -math.inf, "best_epoch": 0, "bad_epochs": 0, "history": []}
        self.best_heads = {k: v.clone() for k, v in model.heads.state_dict().items()}

    def fit(self, train_clips, dev_clips) -> None:
        t = self.cfg.train
        while self.state["epoch"] < t.epochs and self.state["bad_epochs"] < t.patience:
            epoch = self.state["epoch"] + 1
            start = time.perf_counter()
            loss = self.train_epoch(train_clips, epoch)
            dev = self.dev_metrics(dev_clips)
            self.record(epoch, loss, dev, time.perf_counter() - start)
            self.save_resume()
        stopped = "early stop" if self.state["bad_epochs"] >= t.patience else "epoch limit"
        log.info("training ended at epoch %d (%s); best epoch %d, selection %.4f", self.state["epoch"], stopped,
                 self.state["best_epoch"], self.state["best_score"])

    def train_epoch(self, clips, epoch: int) -> dict[str, float]:
        from tqdm import tqdm

        self.model.train()
        order = torch.randperm(len(clips), generator=torch.Generator().manual_seed(self.cfg.train.seed * 1000 + epoch))
        size, sums, n = self.cfg.train.batch_size, {}, 0
        need_align = self.cfg.loss.kind == "distribution" and self.cfg.loss.lambda_sama > 0
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

    def dev_metrics(self, clips) -> dict:
        from training.evaluate import predict, split_metrics

        return split_metrics(predict(self.model, self.features, clips, self.cfg.train.batch_size), clips)

    def record(self, epoch: int, loss: dict, dev: dict, seconds: float) -> None:
        from training.metrics import selection_score

        score = selection_score(dev["MI"], dev["TA"])
        improved = score > self.state["best_score"]
        if improved:
            self.state.update(best_score=score, best_epoch=epoch, bad_epochs=0)
            self.best_heads = {k: v.detach().clone() for k, v in self.model.heads.state_dict().items()}
        else:
            self.state["bad_epochs"] += 1
        self.state["epoch"] = epoch
        self.state["history"].append({"epoch": epoch, "seconds": round(seconds, 3), "train_loss": loss,
                                      "dev": dev, "selection": score})
        log.info("epoch %3d  loss %.4f  dev MI utt SRCC %.3f  TA sys SRCC %.3f  select %.4f%s  (%.1f s)", epoch,
                 loss.get("total", float("nan")), dev["MI"]["utterance"]["SRCC"], dev["TA"]["system"]["SRCC"],
                 score, "  *best*" if improved else "", seconds)

    def _config_key(self) -> str:
        # The device may differ between the interrupted run and its resumption; nothing else may.
        data = self.cfg.to_dict()
        data["train"].pop("device")
        return json.dumps(data, sort_keys=True)

    def save_resume(self) -> None:
        payload = {"config": self._config_key(), "state": json.dumps(self.state),
                   "heads": self.model.heads.state_dict(), "best_heads": self.best_heads,
                   "optimizer": self.optimizer.state_dict(), "rng": torch.get_rng_state()}
        tmp = self.run_dir / f".{RESUME_FILE}.tmp"
        torch.save(payload, tmp)
        tmp.replace(self.run_dir / RESUME_FILE)

    def load_resume(self) -> bool:
        path = self.run_dir / RESUME_FILE
        if not path.is_file():
            return False
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload["config"] != self._config_key():
            raise DeramosError(f"{self.run_dir} holds a run with a different config; use another --out or --overwrite")
        self.model.heads.load_state_dict(payload["heads"])
        self.best_heads = payload["best_heads"]
        self.best_heads = {k: v.to(self.device) for k, v in self.best_heads.items()}
        self.optimizer.load_state_dict(payload["optimizer"])
        torch.set_rng_state(payload["rng"])
        self.state = json.loads(payload["state"])
        self.state["best_score"] = float(self.state["best_score"])
        log.info("resuming %s after epoch %d (best epoch %d)", self.run_dir, self.state["epoch"], self.state["best_epoch"])
        return True


def prepare_run_dir(run_dir: Path, overwrite: bool) -> None:
    if overwrite and run_dir.exists():
        for name in (RESUME_FILE, "model.safetensors", "metrics.json", "config.json"):
            (run_dir / name).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)


def train(args: argparse.Namespace) -> int:
    from training.cache import Features
    from training.checkpoint import save_run_model, write_json
    from training.data import SPLITS, Corpus
    from training.evaluate import format_metrics, predict, split_metrics
    from training.model import build_model, build_tokenizer

    run_config = resolve_config(args)
    check_weights(run_config, args.allow_random_encoders)
    run_config.train.device = pick_device(run_config.train.device)
    run_dir = Path(args.out)
    prepare_run_dir(run_dir, args.overwrite)
    log.info("versions: %s", versions())
    with step("read data", log) as info:
        corpus = Corpus.open(args.data)
        splits = {s: corpus.read_split(s) for s in SPLITS if s != "test" or corpus.list_path(s).is_file()}
        info.update({s: len(c) for s, c in splits.items()})
    with step("build model", log) as info:
        torch.manual_seed(run_config.train.seed)
        model = build_model(run_config.model).to(run_config.train.device)
        tokenizer = build_tokenizer(model)
        info["head_params"] = f"{sum(p.numel() for p in model.heads.parameters()):,}"
        info["encoders"] = f"{run_config.model.audio.name}+{run_config.model.text.name}"
    features = Features(model, tokenizer, None if args.no_cache else args.cache_dir)
    with step("encode clips into the cache" if not args.no_cache else "skip cache (--no-cache)", log) as info:
        info.update(features.prepare([c for clips in splits.values() for c in clips]))
    trainer = Trainer(model, features, run_config, run_dir)
    run_config.to_json(run_dir / "config.json")
    trainer.load_resume()
    with step("train", log) as info:
        trainer.fit(splits["train"], splits["dev"])
        info["epochs"] = trainer.state["epoch"]
    model.heads.load_state_dict(trainer.best_heads)
    save_run_model(model, run_dir)
    metrics = {"best_epoch": trainer.state["best_epoch"], "selection": trainer.state["best_score"],
               "selection_rule": "(utterance MI SRCC + system TA SRCC) / 2 on dev", "epochs_run": trainer.state["epoch"]}
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
