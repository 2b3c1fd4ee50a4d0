"""Import a checkpoint trained with the authors' research code into an ordinary run directory.

``python -m training.import_research CKPT [CKPT ...] --out RUN_DIR [--variant dera-mos|astar-ntu]
[--audio-encoder DIR] [--text-encoder DIR] [--tokenizer DIR] [--no-positional-encoding]``

The checkpoint is read with ``torch.load(weights_only=True)`` (pickled code is refused). Encoder weights
come from the checkpoint (``muq.model.*``, ``roberta.*``, written to ``RUN_DIR/encoders/``) or, when it has
none, from the named local folders. The run directory then serves evaluation, export and the runtime
unchanged; ``RUN_DIR/provenance.json`` records where it came from. The imported model prepares clips with
the ``"torchaudio"`` resampler, as the authors' data path does. A file that is not a torch checkpoint
(e.g. text) or is truncated is refused with one line naming it; ``--out`` must be a new or empty folder,
and a failed import removes what it wrote.

Several checkpoints (e.g. the authors' seeds) are imported as the members of an ensemble: one ordinary run
per checkpoint, ``RUN_DIR/<checkpoint stem>/`` (``RUN_DIR/member-<i>/`` when stems repeat), which
``python -m export.build_engine --run RUN_DIR`` turns into one ensemble bundle. Encoder files equal to an
earlier member's (the frozen encoders usually are) are hard links to it, so they take the disk space once
while every member stays a self-contained run.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import re
import shutil
from pathlib import Path

from deramos_rt.errors import DeramosError
from deramos_rt.console import run_cli, setup_logging, step
from training.cache import file_sha256, state_sha256
from training.checkpoint import load_state_file, save_run_model, write_json
from training.config import RunConfig
from training.research import VARIANTS, import_state_dict, split_state

log = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m training.import_research", description=__doc__.splitlines()[0])
    p.add_argument("checkpoints", nargs="+", metavar="checkpoint",
                   help="a .pth/.pt saved by the research code (a state dict); several: ensemble members")
    p.add_argument("--out", required=True, help="run directory to write (several checkpoints: a folder of runs)")
    p.add_argument("--variant", choices=VARIANTS, default="dera-mos")
    p.add_argument("--audio-encoder", help="local MuQ-large-msd-iter folder, if the checkpoint has no muq.* tensors")
    p.add_argument("--text-encoder", help="local roberta-base folder, if the checkpoint has no roberta.* tensors")
    p.add_argument("--tokenizer", help="roberta-base tokenizer folder (default: --text-encoder)")
    p.add_argument("--no-positional-encoding", action="store_true",
                   help="drop the positional encoding (how the checkpoint was trained) instead of reproducing "
                        "the authors' batch-1 evaluation outputs")
    return p.parse_args(argv)


def save_encoders(model, run_dir: Path, args, written: dict[str, Path] | None = None) -> None:
    """Point the config at encoder weights: files written from the checkpoint, or the given folders.

    Args:
        written: ``{weights sha256: file}`` of encoder files earlier members wrote; an equal encoder is a hard
            link to that file (a copy where links are not possible). Updated in place.
    """
    written = {} if written is None else written
    (run_dir / "encoders").mkdir(exist_ok=True)
    for kind, attr, folder in (("audio", "audio_encoder", args.audio_encoder), ("text", "text_encoder", args.text_encoder)):
        cfg = getattr(model.config, kind)
        encoder = getattr(model, attr)
        if encoder is not None:
            name = f"encoders/{cfg.name}.safetensors"
            _write_encoder(encoder.state_dict() if kind == "audio" else encoder.model.state_dict(), run_dir / name,
                           written)
            cfg.weights = name  # relative to the run directory
        elif folder:
            cfg.weights = str(Path(folder).resolve())
        else:
            flag = "--audio-encoder" if kind == "audio" else "--text-encoder"
            raise DeramosError(f"the checkpoint has no {kind} encoder tensors; pass {flag} DIR (a local copy)")
    tokenizer = args.tokenizer or args.text_encoder
    if model.config.text.options.get("size") == "tiny":
        tokenizer = "tiny"
    if tokenizer is None:
        raise DeramosError("a roberta-base tokenizer folder is needed: pass --tokenizer DIR (vocab.json + merges.txt)")
    model.config.text.tokenizer = tokenizer if tokenizer == "tiny" else str(Path(tokenizer).resolve())


def _write_encoder(state: dict, path: Path, written: dict[str, Path]) -> None:
    import os

    from safetensors.torch import save_file

    digest = state_sha256(state)
    if digest in written:
        try:
            os.link(written[digest], path)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(written[digest], path)
        return
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    written[digest] = path


def member_dirs(sources: list[Path], out: Path) -> list[Path]:
    """Where each checkpoint goes: ``out`` for one; ``out/<stem>`` for several (``out/member-<i>`` if stems repeat)."""
    if len(sources) == 1:
        return [out]
    stems = [re.sub(r"[^A-Za-z0-9._-]", "_", p.stem) or "member" for p in sources]
    if len(set(stems)) < len(stems):
        stems = [f"member-{i + 1}" for i in range(len(sources))]
    return [out / stem for stem in stems]


def import_checkpoint(args: argparse.Namespace) -> int:
    sources = [Path(c) for c in args.checkpoints]
    out = Path(args.out)
    if out.is_file() or (out.is_dir() and any(out.iterdir())):
        raise DeramosError(f"--out {out} already exists and is not an empty folder; choose a new folder")
    created = not out.exists()
    written: dict[str, Path] = {}
    try:
        for source, run_dir in zip(sources, member_dirs(sources, out)):
            write_import(source, run_dir, args, written)
        return 0
    except BaseException:
        if created and out.exists():
            shutil.rmtree(out)  # only what this command created
        elif out.exists():
            for child in out.iterdir():  # --out was an empty folder: empty it again
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        raise


def write_import(source: Path, run_dir: Path, args: argparse.Namespace, written: dict[str, Path] | None = None) -> int:
    """Read, map and write the run directory (see the module docstring)."""
    with step("read checkpoint", log) as info:
        state = load_state_file(source)
        groups = split_state(state)
        info.update({name: len(tensors) for name, tensors in groups.items()})
    with step(f"map onto the project's model ({args.variant})", log) as info:
        model = import_state_dict(state, args.variant, not args.no_positional_encoding)
        info["sama_pool"] = "kept" if any(k.startswith("audio_contrastive") for k in groups["heads"]) else "absent"
        info["positional_encoding"] = model.config.positional_encoding
    with step("write run directory", log) as info:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_encoders(model, run_dir, args, written)
        save_run_model(model, run_dir)
        RunConfig(model=model.config).to_json(run_dir / "config.json")
        write_json(run_dir / "provenance.json", {
            "source": str(source.resolve()), "sha256": file_sha256(source), "variant": args.variant,
            "imported": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "positional_encoding": model.config.positional_encoding, "ta_pooling": model.config.ta_pooling,
            "resampler": model.config.resampler,
            "tensors": {name: len(t) for name, t in groups.items()}})
        info["run"] = run_dir
    for name, tensors in groups.items():
        log.info("mapped %-8s %4d tensors", name, len(tensors))
    return 0


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    args = parse_args(argv)
    return run_cli("training.import_research", lambda: import_checkpoint(args))


if __name__ == "__main__":
    raise SystemExit(main())
