"""Import checkpoints saved by the authors' research code (DeRA-MOS and ASTAR-NTU) into the project's model.

Their checkpoint is ``torch.save(model.state_dict())`` of ``MuQRoBERTaTransformerDistributionPredictor``: the
frozen encoders (``muq.model.*``, ``roberta.*``), the buffers ``bin_centers`` and ``audio_pos_encoder.pe``,
and the head tensors named in :data:`RENAMES`. Two behaviours of that code decide its outputs:

* its positional encoding fires only at batch size 1 (the evaluation setting: the ``pe`` buffer's shape
  (max_len, 1, d) only broadcasts over a batch of 1), so it was trained without it;
* its TA pooling receives an inverted mask (it blanks the real tokens instead of the padding): at batch 1
  it is a plain mean over every token of the prompt, ``<s>`` and ``</s>`` included.

Its data path resamples with torchaudio's default ``Resample`` (per channel, then the channel mean), so
imported models use the ``"torchaudio"`` resampler: they hear what they were trained on.

The defaults (``positional_encoding=True``, ``ta_pooling="mean"``) therefore reproduce the authors' batch-1
evaluation outputs exactly, for every clip and whatever its batch mates; ``positional_encoding=False``
matches how the checkpoint was trained.
"""

from __future__ import annotations

import torch

from deramos_rt.errors import DeramosError
from training.weights import load_strict, unwrap_state_dict
from training.config import BackboneConfig, ModelConfig
from training.model import DeraMos, sinusoidal_table

VARIANTS = ("dera-mos", "astar-ntu")
# Authors' prefix -> the project's (DeraMosHeads) prefix. cross_attention_norm before cross_attention.
RENAMES = (
    ("audio_transformer_encoder.layers.0.", "mi_encoder."),
    ("audio_attentive_pool.attention_weights.", "mi_pool.score."),
    ("overall_mlp.", "mi_mlp."),
    ("audio_seq_proj.", "audio_proj."),
    ("text_seq_proj.", "text_proj."),
    ("cross_attention_norm.", "cross_norm."),
    ("cross_attention.", "cross_attn."),
    ("fused_attentive_pool.attention_weights.", "ta_pool.score."),
    ("audio_contrastive_attentive_pool.attention_weights.", "align_audio_pool.score."),
    ("coherence_mlp.", "ta_mlp."),
)
SAMA_POOL = "audio_contrastive_attentive_pool."
BUFFERS = ("bin_centers", "audio_pos_encoder.pe")
ENCODER_PREFIXES = {"audio": "muq.", "text": "roberta."}


def to_project_name(key: str) -> str | None:
    for theirs, ours in RENAMES:
        if key.startswith(theirs):
            return ours + key[len(theirs):]
    return None


def to_research_name(key: str) -> str:
    for theirs, ours in RENAMES:
        if key.startswith(ours):
            return theirs + key[len(ours):]
    raise KeyError(key)


def split_state(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """Group a research state dict into heads / buffers / audio / text (encoder prefixes stripped)."""
    groups: dict[str, dict[str, torch.Tensor]] = {"heads": {}, "buffers": {}, "audio": {}, "text": {}}
    for key, value in state.items():
        if key in BUFFERS:
            groups["buffers"][key] = value
        elif key.startswith(ENCODER_PREFIXES["audio"]):
            groups["audio"][key[len(ENCODER_PREFIXES["audio"]):]] = value
        elif key.startswith(ENCODER_PREFIXES["text"]):
            groups["text"][key[len(ENCODER_PREFIXES["text"]):]] = value
        else:
            groups["heads"][key] = value
    return groups


def check_buffers(buffers: dict[str, torch.Tensor]) -> int:
    """Check ``bin_centers`` = linspace(1, 5, K) and the sinusoidal ``pe`` table; return K."""
    missing = [k for k in BUFFERS if k not in buffers]
    if missing:
        raise DeramosError(f"research checkpoint lacks buffer(s): {', '.join(missing)}")
    bins = buffers["bin_centers"]
    if bins.dim() != 1 or not torch.allclose(bins.float(), torch.linspace(1, 5, bins.numel()), atol=1e-6):
        raise DeramosError(f"bin_centers is not linspace(1, 5, {bins.numel()}): {bins.tolist()[:4]}...")
    pe = buffers["audio_pos_encoder.pe"]
    if pe.dim() != 3 or pe.shape[1] != 1:
        raise DeramosError(f"audio_pos_encoder.pe has shape {tuple(pe.shape)}, expected (max_len, 1, d_model)")
    if not torch.allclose(pe[:, 0].float(), sinusoidal_table(pe.shape[0], pe.shape[2]), atol=1e-4):
        raise DeramosError("audio_pos_encoder.pe is not the sinusoidal table the research code builds")
    return int(bins.numel())


def infer_config(heads: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], variant: str,
                 positional_encoding: bool) -> ModelConfig:
    """The project config of a research checkpoint, sizes read off the tensors' shapes."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in heads:
            raise DeramosError(f"research checkpoint lacks head tensor {key}")
        return tuple(heads[key].shape)

    d_x, d_t = shape("text_seq_proj.weight")
    return ModelConfig(
        audio=BackboneConfig("muq"), text=BackboneConfig("roberta"),
        num_bins=check_buffers(buffers), mi_heads=4, ta_heads=4,
        mi_ff=shape("audio_transformer_encoder.layers.0.linear1.weight")[0],
        mi_mlp=[shape("overall_mlp.0.weight")[0], shape("overall_mlp.3.weight")[0]],
        ta_dim=d_x, ta_mlp=[shape("coherence_mlp.0.weight")[0], shape("coherence_mlp.3.weight")[0]],
        positional_encoding=positional_encoding, pe_max_len=buffers["audio_pos_encoder.pe"].shape[0],
        ta_pooling="mean", ta_kv_source="audio" if variant == "dera-mos" else "mi", resampler="torchaudio",
        audio_dim=shape("audio_attentive_pool.attention_weights.weight")[1], text_dim=d_t)


def map_heads(heads: dict[str, torch.Tensor], model: DeraMos, variant: str) -> dict[str, torch.Tensor]:
    """Rename head tensors; report unexpected, missing and mis-shaped keys in the authors' naming."""
    own = model.heads.state_dict()
    mapped, unexpected = {}, []
    for key, value in heads.items():
        name = to_project_name(key)
        if name is None or name not in own or (variant == "astar-ntu" and key.startswith(SAMA_POOL)):
            unexpected.append(key)
        else:
            mapped[name] = value
    optional = ("align_audio_pool.",) if variant == "astar-ntu" else ()
    missing = [to_research_name(k) for k in own if k not in mapped and not k.startswith(optional)]
    shapes = [f"{to_research_name(k)}: {tuple(v.shape)} vs {tuple(own[k].shape)}"
              for k, v in mapped.items() if v.shape != own[k].shape]
    problems = [f"{label}: {', '.join(keys)}" for label, keys in
                (("unexpected keys", unexpected), ("missing keys", missing), ("wrong shapes", shapes)) if keys]
    if problems:
        raise DeramosError(f"not a {variant} research checkpoint: " + " | ".join(problems))
    return mapped


def import_state_dict(state_dict, variant: str = "dera-mos", positional_encoding: bool = True,
                      audio_encoder: torch.nn.Module | None = None,
                      text_encoder: torch.nn.Module | None = None) -> DeraMos:
    """Turn a research-code state dict into the project's :class:`DeraMos` (eval mode).

    Args:
        state_dict: flat, or wrapped under ``state_dict`` / ``model_state_dict``.
        variant: ``"dera-mos"`` (cross-attention on the raw MuQ sequence) or ``"astar-ntu"`` (on the MI
            transformer output).
        positional_encoding: True reproduces the authors' batch-1 evaluation; False how they trained.
        audio_encoder, text_encoder: encoders to use when the checkpoint carries none.

    Returns:
        The model; an encoder is None when neither the checkpoint nor the arguments provide it.
    """
    if variant not in VARIANTS:
        raise DeramosError(f"unknown variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    groups = split_state(unwrap_state_dict(state_dict, "research checkpoint"))
    config = infer_config(groups["heads"], groups["buffers"], variant, positional_encoding)
    audio = _encoder("audio", groups["audio"], config, audio_encoder)
    text = _encoder("text", groups["text"], config, text_encoder)
    model = DeraMos(config, audio, text)
    load_strict(model.heads, map_heads(groups["heads"], model, variant), "research checkpoint (heads)",
                ignore_missing=("align_audio_pool.",) if variant == "astar-ntu" else ())
    return model.eval()


def _encoder(kind: str, state: dict[str, torch.Tensor], config: ModelConfig, given):
    if not state:
        return given
    if kind == "audio":
        from training.backbones.muq import MuQBackbone, load_muq_state

        width = state["model.conv.linear.weight"].shape[0] if "model.conv.linear.weight" in state else None
        encoder = MuQBackbone("large" if width == 1024 else "tiny")
        config.audio.options = {"size": encoder.size}
        load_muq_state(encoder, state, "research checkpoint (muq.*)")
    else:
        from training.backbones.text_hf import build_text, load_hf_state

        width = state["embeddings.word_embeddings.weight"].shape[1] if "embeddings.word_embeddings.weight" in state else None
        size = "base" if width == 768 else "tiny"
        encoder = build_text("roberta", size=size)
        config.text.options = {"size": size}
        load_hf_state(encoder, state, source="research checkpoint (roberta.*)")
    for field, dim in (("audio_dim" if kind == "audio" else "text_dim", encoder.contract.hidden_size),):
        if getattr(config, field) != dim:
            raise DeramosError(f"the checkpoint's {kind} encoder gives {dim}-d outputs but its heads expect {getattr(config, field)}")
    return encoder.eval()
