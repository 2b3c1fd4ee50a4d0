"""ONNX graphs: the three parts of ``training/split.py`` (and, for the encoder checks, an audio backbone alone).

The legacy TorchScript exporter (``dynamo=False``, opset 17) is used. Every project front end computes its
STFT as a strided conv1d, so nothing needs the dynamo exporter; the legacy exporter keeps symbolic batch
and token axes from a traced example without specialising them (checked at batch 1, 3 and 7 by the tests),
it handles transformers' eager BERT/RoBERTa attention and its masks, and it exports a 300 M-parameter
encoder in seconds, where the dynamo exporter's decomposition is far slower and emits opset 18.

Axis names are part of the bundle contract: ``batch`` on every input and output, ``tokens`` on the text
length (each part declares them: ``dynamic_axes()``); an ensemble's graphs add a fixed member axis at dim 1
of every output (``training/ensemble.py``). Graphs whose weights exceed protobuf's 2 GB limit are saved with ONNX external data (one
``<file>.data`` beside the graph); the bundle lists and hashes that file like any other.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import warnings
from pathlib import Path
from typing import Iterator

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)
OPSET = 17
# Above this many bytes of protobuf a graph is written with external data (hard limit: 2 GiB).
EXTERNAL_DATA_BYTES = 1_800_000_000
_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 9: "bool"}


@contextlib.contextmanager
def mha_fastpath_off() -> Iterator[None]:
    """Make nn.MultiheadAttention traceable with a symbolic sequence length.

    Two things stand in the way: the fused inference fast path (nn.TransformerEncoderLayer /
    MultiheadAttention) has no ONNX export, and torch 2.13's ``F.multi_head_attention_forward`` traced by
    the legacy exporter bakes the query length into its reshapes (a graph traced with 7 tokens then fails
    on 5). While exporting, the fast path is off and ``F.multi_head_attention_forward`` is replaced by
    :func:`_mha_traceable`, the same computation written with ``-1`` for every sequence length.
    """
    fastpath = torch.backends.mha.get_fastpath_enabled()
    original = F.multi_head_attention_forward
    torch.backends.mha.set_fastpath_enabled(False)
    F.multi_head_attention_forward = functools.partial(_mha_traceable, original)
    try:
        yield
    finally:
        F.multi_head_attention_forward = original
        torch.backends.mha.set_fastpath_enabled(fastpath)


def _mha_traceable(original, query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias,
                   bias_k, bias_v, add_zero_attn, dropout_p, out_proj_weight, out_proj_bias, training=True,
                   key_padding_mask=None, need_weights=True, attn_mask=None, use_separate_proj_weight=False,
                   q_proj_weight=None, k_proj_weight=None, v_proj_weight=None, static_k=None, static_v=None,
                   average_attn_weights=True, is_causal=False):
    """``F.multi_head_attention_forward`` for (L, B, E) inputs, optional key padding mask, eval mode.

    Any other use (attention weights, masks of other kinds, bias_k/v, dropout in training) goes to the
    original function.
    """
    simple = (not need_weights and bias_k is None and bias_v is None and not add_zero_attn and static_k is None
              and static_v is None and not is_causal and attn_mask is None and query.dim() == 3
              and not (training and dropout_p > 0))
    if not simple:
        return original(query, key, value, embed_dim_to_check, num_heads, in_proj_weight, in_proj_bias, bias_k,
                        bias_v, add_zero_attn, dropout_p, out_proj_weight, out_proj_bias, training=training,
                        key_padding_mask=key_padding_mask, need_weights=need_weights, attn_mask=attn_mask,
                        use_separate_proj_weight=use_separate_proj_weight, q_proj_weight=q_proj_weight,
                        k_proj_weight=k_proj_weight, v_proj_weight=v_proj_weight, static_k=static_k,
                        static_v=static_v, average_attn_weights=average_attn_weights, is_causal=is_causal)
    embed = embed_dim_to_check  # a Python int: keeps the scale and head size constant in the trace
    head_dim = embed // num_heads
    if use_separate_proj_weight:
        weights = (q_proj_weight, k_proj_weight, v_proj_weight)
    else:
        weights = in_proj_weight.chunk(3)
    biases = in_proj_bias.chunk(3) if in_proj_bias is not None else (None, None, None)
    batch = query.shape[1]

    def heads(x, w, b):  # (L, B, E) -> (B, H, L, d); -1 keeps the length symbolic
        return F.linear(x, w, b).transpose(0, 1).reshape(batch, -1, num_heads, head_dim).transpose(1, 2)

    q, k, v = (heads(x, w, b) for x, w, b in zip((query, key, value), weights, biases))
    scores = torch.matmul(q * (1.0 / math.sqrt(head_dim)), k.transpose(-2, -1))
    if key_padding_mask is not None:
        mask = key_padding_mask.reshape(batch, 1, 1, -1)
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(mask, float("-inf"))
        else:
            scores = scores + mask.to(scores.dtype)
    out = torch.matmul(torch.softmax(scores, dim=-1), v)  # (B, H, L, d)
    out = out.transpose(1, 2).reshape(batch, -1, embed).transpose(0, 1)
    return F.linear(out, out_proj_weight, out_proj_bias), None


def export_audio_encoder(backbone: torch.nn.Module, path: str | Path, opset: int = OPSET,
                         dynamic_batch: bool = True) -> Path:
    """Export ``waveform (B, N) float32 -> hidden (B, T, D)`` for an audio backbone.

    Args:
        backbone: an :class:`training.backbones.AudioBackbone` (its contract gives N).
        path: output ``.onnx`` file.
        opset: ONNX opset for the legacy exporter.
        dynamic_batch: keep the batch axis symbolic (``batch``).
    """
    example = torch.zeros(2, backbone.contract.num_samples)
    axes = {"waveform": {0: "batch"}, "hidden": {0: "batch"}} if dynamic_batch else None
    return _export(backbone, (example,), path, ["waveform"], ["hidden"], axes, opset)


def part_examples(audio_part, text_part) -> dict[str, tuple[torch.Tensor, ...]]:
    """Example inputs (batch 2, a padded prompt) for tracing the three parts."""
    contract = audio_part.encoder.contract
    wave = 0.1 * torch.randn(2, contract.num_samples, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, audio_x = audio_part(wave)
    tokens = min(7, text_part.encoder.contract.max_tokens)
    vocab = text_part.encoder.contract.vocab_size
    ids = torch.randint(5, min(vocab, 1000), (2, tokens), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, tokens, dtype=torch.long)
    mask[1, tokens - 2:] = 0
    with torch.no_grad():
        text_x = text_part(ids, mask)
    return {"audio": (wave,), "text": (ids, mask), "ta": (audio_x, text_x, mask)}


def export_parts(model, out_dir: str | Path, opset: int = OPSET, suffix: str = "fp32") -> dict[str, Path]:
    """Export a DeRA-MOS model's (or an ensemble's) three parts to ``out_dir/{audio,text,ta}.<suffix>.onnx``.

    Args:
        model: a :class:`training.model.DeraMos` with both encoders, or a :class:`training.ensemble.Ensemble`
            (its graphs hold the encoders once and a member axis on every output).
        out_dir: folder for the graphs.
        opset: ONNX opset.
        suffix: the variant name in the file names.

    Returns:
        ``{"audio": path, "text": path, "ta": path}``.
    """
    from training.split import AUDIO_INPUTS, TA_INPUTS, TEXT_INPUTS, split_model

    parts = dict(zip(("audio", "text", "ta"), split_model(model)))
    examples = part_examples(parts["audio"], parts["text"])
    inputs = {"audio": AUDIO_INPUTS, "text": TEXT_INPUTS, "ta": TA_INPUTS}
    out_dir = Path(out_dir)
    paths = {}
    for graph, module in parts.items():
        paths[graph] = _export(module, examples[graph], out_dir / f"{graph}.{suffix}.onnx", list(inputs[graph]),
                               list(module.output_names()), module.dynamic_axes(), opset)
    model.eval()
    return paths


def _export(module, example, path, input_names, output_names, axes, opset) -> Path:
    import shutil

    path = Path(path)
    # Export into a private folder: over 2 GB the exporter writes one external file per weight tensor,
    # which are then gathered into one ``<graph>.data`` file by save_model.
    work = path.with_name(path.name + ".export")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    module.eval()
    try:
        with mha_fastpath_off(), torch.no_grad(), warnings.catch_warnings():
            # Shape checks on constant sizes (e.g. the positional table length) warn while tracing.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(module, example, str(work / path.name), dynamo=False, opset_version=opset,
                              input_names=input_names, output_names=output_names, dynamic_axes=axes)
        if [p.name for p in work.iterdir()] == [path.name]:
            (work / path.name).replace(path)
        else:
            save_model(load_model(work / path.name), path)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        module.eval()  # the exporter can leave modules in training mode
    log.info("exported %s (opset %d)", path, opset)
    return path


def save_model(model, path: str | Path) -> list[Path]:
    """Save an ``onnx.ModelProto``; over :data:`EXTERNAL_DATA_BYTES` the weights go to ``<name>.data``.

    Returns:
        The files written (the graph, then its external data file if any).
    """
    import onnx

    path = Path(path)
    data = path.with_name(path.name + ".data")
    if data.exists():
        data.unlink()
    if model.ByteSize() < EXTERNAL_DATA_BYTES:
        onnx.save_model(model, str(path))
        return [path]
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    return [path, data]


def load_model(path: str | Path):
    """Load an ONNX graph with its external data (if any)."""
    import onnx

    return onnx.load_model(str(path), load_external_data=True)


def graph_files(path: str | Path) -> list[Path]:
    """The graph file and the external data files it references (relative to its folder)."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    path = Path(path)
    model = onnx.load_model(str(path), load_external_data=False)
    extra = set()
    for tensor in _get_all_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location":
                extra.add(entry.value)
    return [path, *(path.parent / name for name in sorted(extra))]


def graph_spec(path: str | Path) -> dict[str, list[dict]]:
    """``{"inputs": [{name, dtype, shape}], "outputs": [...]}``; symbolic axes are their names (strings)."""
    import onnx

    model = onnx.load_model(str(path), load_external_data=False)

    def spec(values):
        out = []
        for value in values:
            tensor = value.type.tensor_type
            shape = [d.dim_param if d.dim_param else int(d.dim_value) if d.HasField("dim_value") else "?"
                     for d in tensor.shape.dim]
            out.append({"name": value.name, "dtype": _DTYPES.get(tensor.elem_type, str(tensor.elem_type)),
                        "shape": shape})
        return out

    return {"inputs": spec(model.graph.input), "outputs": spec(model.graph.output)}


def slim(path: str | Path, check) -> bool:
    """Simplify a graph in place with onnxslim when ``check(candidate_path)`` accepts the result.

    Args:
        path: the graph to simplify.
        check: ``check(candidate) -> str | None``: None when the candidate is equivalent, else why not.

    Returns:
        True when the simplified graph replaced the original.
    """
    import onnxslim

    path = Path(path)
    candidate = path.with_name(path.stem + ".slim.onnx")
    try:
        slimmed = onnxslim.slim(load_model(path))
        written = save_model(slimmed, candidate)
    except Exception as exc:  # onnxslim can reject unusual graphs; the unsimplified graph is still valid
        log.warning("onnxslim could not simplify %s (%s); keeping it as exported", path.name, exc)
        _remove(candidate)
        return False
    reason = check(candidate)
    if reason is not None:
        log.warning("onnxslim changed %s's outputs (%s); keeping it as exported", path.name, reason)
        _remove(candidate)
        return False
    original = graph_files(path)
    for old in original:
        old.unlink()
    if len(written) == 1:
        candidate.replace(path)
    else:  # re-save so the external data file is named after the final graph name
        save_model(load_model(candidate), path)
        _remove(candidate)
    return True


def _remove(path: Path) -> None:
    for p in (path, path.with_name(path.name + ".data")):
        if p.exists():
            p.unlink()
