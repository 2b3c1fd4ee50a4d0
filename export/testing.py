"""Run directories with random weights, for tests and for checking exports of every model kind quickly."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def write_random_run(run_dir: str | Path, recipe: str = "tiny", seed: int = 0, load_weights: bool = False,
                     **model_fields: Any) -> Path:
    """Write a run directory (``config.json`` + ``model.safetensors``) with seeded random weights.

    Args:
        run_dir: folder to create.
        recipe: a named recipe or a recipe JSON path (its model section is used).
        seed: torch seed for the random weights.
        load_weights: load encoder weights named in the recipe (False: random encoders, saved in the run).
        **model_fields: ModelConfig overrides, e.g. ``head="scalar"`` or ``audio=BackboneConfig(...)``.

    Returns:
        The run directory.
    """
    import torch

    from training.checkpoint import save_run_model
    from training.config import load_recipe
    from training.model import build_model

    run_config = load_recipe(recipe)
    for key, value in model_fields.items():
        setattr(run_config.model, key, value)
    if not load_weights:  # random encoders are saved inside the run, so no weights source is recorded
        run_config.model.audio.weights = None
        if run_config.model.text.weights != "package":
            run_config.model.text.weights = None
    torch.manual_seed(seed)
    model = build_model(run_config.model, load_weights=load_weights)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_run_model(model, run_dir)
    run_config.to_json(run_dir / "config.json")
    return run_dir


def tiny_bundle(folder: str | Path, precisions=("fp32",), seed: int = 0, recipe: str = "tiny",
                **options: Any) -> Path:
    """A bundle of a random-weight tiny model in ``folder/bundle`` (run directory in ``folder/run``).

    A pytest fixture can call this once per session: it takes a few seconds on two cores with the default
    (small) parity gate of 4 generated files + 12 random signals.
    """
    from export.build_engine import build_bundle

    folder = Path(folder)
    run = write_random_run(folder / "run", recipe=recipe, seed=seed)
    options.setdefault("parity_files", 4)
    options.setdefault("parity_random", 12)
    return build_bundle(run, folder / "bundle", precisions, **options)


ROBERTA_VOCAB_SIZE = 50265
_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def roberta_tokenizer_folder(folder: str | Path, vocab_size: int = ROBERTA_VOCAB_SIZE, seed: int = 0) -> Path:
    """A RoBERTa-shaped tokenizer folder (``vocab.json`` + ``merges.txt``) with roberta-base's vocabulary size.

    A byte-level BPE is trained offline on a few thousand made-up prompts, then ``vocab.json`` is padded
    with unused filler entries up to ``vocab_size``, so the model's embedding table and the bundle's
    tokenizer have the real sizes (roberta-base's own files cannot be downloaded here).
    """
    import json
    import random

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai")]
    words = "calm piano fast drums sad violin ambient jazz rock with a the of loud soft melody".split()
    words += ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(2000)]
    corpus = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 20))) for _ in range(3000)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=4000, special_tokens=_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tok.model.save(str(folder))
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    for i in range(len(vocab), vocab_size):
        vocab[f"<unused{i}>"] = i
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    return folder


def write_full_size_run(run_dir: str | Path, tokenizer_dir: str | Path, seed: int = 0) -> Path:
    """The paper's model at full size (``dera-mos-code``: MuQ-large + roberta-base) with random weights.

    About 455 M parameters (1.8 GB of safetensors); building it takes about a minute on two cores.
    """
    from training.config import BackboneConfig

    text = BackboneConfig("roberta", {}, None, str(Path(tokenizer_dir).resolve()))
    return write_random_run(run_dir, recipe="dera-mos-code", seed=seed, text=text)


def write_member_runs(folder: str | Path, count: int = 2, seed: int = 0, recipe: str = "tiny",
                      **model_fields: Any) -> list[Path]:
    """``count`` run directories ``folder/member-<i>`` that share one set of random encoders, each with its
    own seeded random heads: the members of an ensemble, for tests.

    Args:
        folder: parent folder to create.
        count: how many members.
        seed: seed of the shared encoders (member i's heads use ``seed + i``).
        recipe, **model_fields: as for :func:`write_random_run`.
    """
    folder = Path(folder)
    runs = [write_random_run(folder / "member-1", recipe=recipe, seed=seed, **model_fields)]
    return runs + [write_member(runs[0], folder / f"member-{i + 1}", seed + i) for i in range(1, count)]


def write_member(base: str | Path, run_dir: str | Path, seed: int) -> Path:
    """A run directory with ``base``'s encoders and seeded random heads: another member of ``base``'s ensemble.

    Written into a temporary folder beside ``run_dir`` and renamed, so a run directory that exists is whole.
    """
    import torch

    from training.checkpoint import load_run, save_run_model
    from training.model import DeraMosHeads

    model, run_config = load_run(base)
    torch.manual_seed(seed)
    model.heads = DeraMosHeads(model.config)
    run_dir = Path(run_dir)
    tmp = run_dir.with_name(run_dir.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_run_model(model, tmp)
    run_config.to_json(tmp / "config.json")
    tmp.rename(run_dir)
    return run_dir
