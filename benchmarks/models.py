"""The models the benchmark report measures, prepared as run directories and bundles, and its clips.

* ``default``: the built-in model (``deramos_rt/model_data/default``); its bundle is the user's cached one when
  setup.sh built it, else one is built into the work folder.
* ``clap-roberta`` and ``muq-roberta``: the recipes ``clap-roberta`` and ``dera-mos-code`` with RANDOM
  weights (``training.model.build_model(config, load_weights=False)``), saved as run directories. Random
  weights cost the same time as trained ones. RoBERTa needs a tokenizer whose vocabulary has the model's
  50,265 entries: :func:`write_roberta_tokenizer` writes a WordPiece ``tokenizer.json`` over the built-in
  tiny vocabulary (characters and music words) padded with filler entries to 50,265, ``<pad>`` = 1 as in
  roberta-base. Prompts tokenise to more pieces than real BPE would (about 1.5x), which the report states.

Everything built is cached in the work folder (``.cache/bench`` by default) and reused by later runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deramos_rt import models as builtin

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RUN = builtin.run_dir(builtin.DEFAULT)
ROBERTA_VOCAB = 50265
PROMPTS = (
    "A calm piano piece with a slow tempo.",
    "Energetic rock song with loud drums and electric guitar",
    "ambient electronic texture, soft synth pads",
    "Sad violin melody in a minor key, very quiet and gentle",
    "upbeat jazz with a walking bass and a trumpet solo",
    "orchestral strings and choir, dark and dramatic",
    "happy folk song with acoustic guitar and flute",
    "fast dance track with a heavy beat",
)


def default_bundle() -> Path | None:
    """The built-in model's bundle in the user's cache, when setup.sh (or a first use) built it."""
    from deramos_rt.bundle import is_bundle

    path = builtin.bundle_path(builtin.DEFAULT)
    return path if is_bundle(path) else None


@dataclass
class ModelSpec:
    """One model of the report.

    Attributes:
        name: short name used in tables and file names.
        title: what it is, for the report.
        recipe: the training recipe it comes from (None for the built-in model).
        clips: clips measured per row in the default run.
        batch_sizes: batch sizes for this model (None: the run's).
        run_dir, bundle_dir: filled in by :func:`prepare`.
        notes: facts the report prints next to the model (random weights, tokenizer, bundle build time).
        sweep: measure model-only latency at every batch size (off for CLAP and MuQ-large: seconds to minutes per clip).
    """

    name: str
    title: str
    recipe: str | None
    clips: int
    batch_sizes: tuple[int, ...] | None = None
    run_dir: Path | None = None
    bundle_dir: Path | None = None
    notes: list[str] = field(default_factory=list)
    sweep: bool = True


def model_specs(names: list[str], clips: int | None, quick: bool) -> list[ModelSpec]:
    """The specs asked for, with their default clip counts (``clips`` overrides every model's)."""
    known = {
        # 256 clips = 8 batches of 32: with 2 batches (64 clips) the first batch's decoding and the last one's
        # inference overlap nothing, and the end-to-end row measures the pipeline filling and draining.
        "default": ModelSpec("default", "built-in default model (deramos_rt/model_data/default)", None, 24 if quick else 256),
        # CLAP: about 1 clip/s on 2 cores, so one batch of 8 per row and no latency sweep (it would triple the
        # model's share of a default report).
        "clap-roberta": ModelSpec("clap-roberta", "CLAP HTSAT-base + RoBERTa-base (random weights)", "clap-roberta",
                                  8, (1, 8), sweep=False),
        "muq-roberta": ModelSpec("muq-roberta", "MuQ-large + RoBERTa-base, the paper's model (random weights)",
                                 "dera-mos-code", 2 if quick else 3, (1, 2) if quick else (1, 3), sweep=False),
    }
    out = []
    for name in names:
        if name not in known:
            from deramos_rt.errors import DeramosError

            raise DeramosError(f"unknown model {name!r}; choose from: {', '.join(known)}")
        spec = known[name]
        if clips:
            spec.clips = clips if name != "muq-roberta" else min(clips, spec.clips)
        out.append(spec)
    return out


def write_roberta_tokenizer(folder: Path, vocab_size: int = ROBERTA_VOCAB) -> Path:
    """A ``tokenizer.json`` with RoBERTa's specials (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3) over
    the tiny WordPiece vocabulary, padded with filler entries to ``vocab_size`` entries."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    from deramos_rt.text import tiny_vocab

    folder.mkdir(parents=True, exist_ok=True)
    tokens = ["<s>", "<pad>", "</s>", "<unk>"] + [t for t in tiny_vocab() if not t.startswith("[")]
    tokens += [f"<filler{i}>" for i in range(vocab_size - len(tokens))]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="<unk>", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    path = folder / "tokenizer.json"
    tok.save(str(path))
    return path


def random_run(recipe: str, run_dir: Path, seed: int = 0) -> Path:
    """A run directory of ``recipe`` with random encoder and head weights (cached: built once)."""
    if (run_dir / "config.json").is_file() and (run_dir / "model.safetensors").is_file():
        return run_dir
    import torch

    from training.checkpoint import save_run_model
    from training.config import RunConfig, load_recipe
    from training.model import build_model

    config = load_recipe(recipe)
    tmp = run_dir.with_name(run_dir.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    if config.model.text.name == "roberta":
        write_roberta_tokenizer(tmp / "tokenizer")
        config.model.text.tokenizer = str((run_dir / "tokenizer").resolve())
    torch.manual_seed(seed)
    model = build_model(config.model, load_weights=False)
    save_run_model(model, tmp)
    RunConfig(model=model.config).to_json(tmp / "config.json")
    tmp.rename(run_dir)
    return run_dir


def prepare(spec: ModelSpec, work: Path, precisions=("fp32", "int8"), log=print, build: bool = True,
            wait_s: float = 0.0) -> ModelSpec:
    """Fill in ``spec.run_dir`` and ``spec.bundle_dir``, building (and caching) what is missing.

    With ``build=False`` a missing bundle is not built: ``spec.bundle_dir`` is None and a note says why.
    ``wait_s``: how long to wait for a build of the same bundle that another process has under way.
    """
    from deramos_rt.bundle import is_bundle

    if spec.bundle_dir is not None and spec.run_dir is not None and is_bundle(spec.bundle_dir):
        return spec  # given on the command line (--bundle)
    if spec.recipe is None:
        spec.run_dir = DEFAULT_RUN
        spec.bundle_dir = default_bundle() or work / "default-bundle"
    else:
        start = time.perf_counter()
        spec.run_dir = random_run(spec.recipe, work / f"{spec.name}-run")
        spec.notes.append(f"run directory {spec.run_dir} (random weights, seed 0; ready in "
                          f"{time.perf_counter() - start:.1f} s)")
        spec.bundle_dir = work / f"{spec.name}-bundle"
    _wait_for_other_build(spec.bundle_dir, wait_s, log)
    if not is_bundle(spec.bundle_dir) and not build:
        spec.notes.append(f"no bundle at {spec.bundle_dir} and --no-build: the bundle rows were not run (build it "
                          f"with python -m export.build_engine --run {spec.run_dir} --out {spec.bundle_dir})")
        spec.bundle_dir = None
    elif not is_bundle(spec.bundle_dir):
        from export.build_engine import build_bundle

        log(f"[prepare] building bundle {spec.bundle_dir} ({','.join(precisions)}) from {spec.run_dir}")
        start = time.perf_counter()
        small = spec.name == "muq-roberta"
        build_bundle(spec.run_dir, spec.bundle_dir, precisions,
                     parity_files=2 if small else 4, parity_random=2 if small else 8)
        spec.notes.append(f"bundle built in this run in {time.perf_counter() - start:.0f} s")
    else:
        spec.notes.append(f"bundle {spec.bundle_dir} reused (built before this run)")
    return spec


def _wait_for_other_build(bundle_dir: Path, wait_s: float, log) -> None:
    """Wait (up to ``wait_s``) while another process builds this bundle (export's ``.NAME.building-*`` folder)."""
    from deramos_rt.bundle import is_bundle

    deadline = time.perf_counter() + wait_s
    while (not is_bundle(bundle_dir) and time.perf_counter() < deadline
           and any(bundle_dir.parent.glob(f".{bundle_dir.name}.building-*"))):
        log(f"[prepare] waiting for another process's build of {bundle_dir}")
        time.sleep(15)


def write_clips(folder: Path, count: int, seconds: float, rate: int = 44100, channels: int = 2,
                seed: int = 0, formats: tuple[str, ...] = ("wav",)) -> list[Path]:
    """``count`` music-like files (decaying notes + a little noise), cached by name.

    ``formats`` cycle over the files (``wav`` and ``flac`` 16-bit PCM, ``mp3`` MPEG layer III): a user's
    folder mixes them, and each decodes at its own cost.
    """
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    n = int(rate * seconds)
    t = np.arange(n) / rate
    for i in range(count):
        ext = formats[i % len(formats)]
        path = folder / f"S{i % 8:03d}_clip{i:05d}.{ext}"
        paths.append(path)
        if path.is_file():
            continue
        rng = np.random.default_rng(seed + i)
        notes = 110.0 * 2 ** (rng.integers(0, 36, int(seconds * 4) + 1) / 12)
        step = (t * 4).astype(int)
        signal = 0.4 * np.sin(2 * np.pi * notes[step] * t) * np.exp(-5 * ((t * 4) % 1))
        signal += 0.01 * rng.standard_normal(n)
        data = np.stack([signal, 0.9 * signal], axis=1) if channels == 2 else signal
        tmp = path.with_name(f".{path.name}.tmp")
        options = {"format": "MP3"} if ext == "mp3" else {"format": ext.upper(), "subtype": "PCM_16"}
        sf.write(str(tmp), data.astype(np.float32), rate, **options)
        tmp.rename(path)
    return paths


def items_for(paths: list[Path]) -> list[tuple[str, str]]:
    """(path, prompt) items: prompts cycle through :data:`PROMPTS` (8 distinct prompts)."""
    return [(str(p), PROMPTS[i % len(PROMPTS)]) for i, p in enumerate(paths)]
