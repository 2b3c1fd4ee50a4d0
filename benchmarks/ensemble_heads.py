"""The heads of an M-member ensemble in ONNX Runtime: one graph holding all members, or one graph per member.

``python -m benchmarks.ensemble_heads [--sizes tiny,builtin] [--members 4,8] [--batch 8] [--repeats 20]``

Only the heads are timed (the part after the shared encoders, which is the same either way): the audio
side (MI branch + TA key/value projection, on encoder outputs) and the TA graph. "joint" runs
``training.ensemble``'s parts (what an ensemble bundle holds); "per member" runs M single-member graphs
one after another on the same inputs and stacks their outputs, as a bundle with one graph per member would.
Random weights (cost does not depend on their values); ORT CPU fp32, default threads; medians of
``--repeats`` calls after two warm-up calls. Sizes: ``tiny`` (the ``tiny`` recipe's heads), ``builtin`` (the
built-in model's: ``demo-minilm``, 10 s at 5 frames/s), ``paper`` (DeRA-MOS: MuQ-large 1024-d, 750 frames,
TA width 768).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

# size: (recipe, audio frames T, audio width, text width)
SIZES = {"tiny": ("tiny", 249, 32, 32), "builtin": ("demo-minilm", 50, 96, 384), "paper": ("dera-mos-code", 750, 1024, 768)}
TOKENS = 16


class _AudioHeads(nn.Module):
    """Encoder outputs -> the audio part's outputs (one member's heads, or an ensemble part's)."""

    def __init__(self, part):
        super().__init__()
        self.part = part

    def forward(self, hidden):
        return self.part.from_hidden(hidden)


def member_heads(size: str, count: int, seed: int = 0):
    """``count`` random members' heads of one size, and the config they share."""
    from training.config import load_recipe
    from training.model import DeraMosHeads

    recipe, _, audio_dim, text_dim = SIZES[size]
    config = load_recipe(recipe).model
    config.audio_dim, config.text_dim = audio_dim, text_dim
    heads = []
    for i in range(count):
        torch.manual_seed(seed + i)
        heads.append(DeraMosHeads(config).eval())
    return heads, config


def _export(module, example, path: Path, inputs, outputs, axes) -> Path:
    import warnings

    from export.graphs import OPSET, mha_fastpath_off

    with mha_fastpath_off(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), example, str(path), dynamo=False, opset_version=OPSET, input_names=inputs,
                          output_names=outputs, dynamic_axes=axes)
    return path


def build_graphs(size: str, count: int, folder: Path) -> dict[str, list[Path]]:
    """``{"joint_audio": [path], "joint_ta": [path], "member_audio": [M paths], "member_ta": [M paths]}``."""
    from training.ensemble import EnsembleAudioPart, EnsembleTAPart
    from training.split import AudioPart, TAPart

    heads, config = member_heads(size, count)
    _, frames, audio_dim, _ = SIZES[size]
    width = config.ta_dim or config.text_dim
    shell = type("Shell", (), {})  # stands in for a model: the parts read only these attributes
    hidden = torch.zeros(2, frames, audio_dim)
    x_one, t_one = torch.zeros(2, frames, width), torch.zeros(2, TOKENS, width)
    mask = torch.ones(2, TOKENS, dtype=torch.long)
    b, bt = {0: "batch"}, {0: "batch", 1: "tokens"}
    bmt = {0: "batch", 2: "tokens"}
    ensemble = shell()
    ensemble.audio_encoder, ensemble.heads = None, nn.ModuleList(heads)
    graphs = {"joint_audio": [_export(_AudioHeads(EnsembleAudioPart(ensemble)), (hidden,), folder / "joint_audio.onnx",
                                      ["hidden"], ["mi", "audio_x"], {"hidden": b, "mi": b, "audio_x": b})],
              "joint_ta": [_export(EnsembleTAPart(ensemble), (x_one[:, None].repeat(1, count, 1, 1),
                                                               t_one[:, None].repeat(1, count, 1, 1), mask),
                                   folder / "joint_ta.onnx", ["audio_x", "text_x", "text_mask"], ["ta"],
                                   {"audio_x": b, "text_x": bmt, "text_mask": bt, "ta": b})],
              "member_audio": [], "member_ta": []}
    for i, h in enumerate(heads):
        model = shell()
        model.audio_encoder, model.heads = None, h
        graphs["member_audio"].append(_export(_AudioHeads(AudioPart(model)), (hidden,), folder / f"audio_{i}.onnx",
                                              ["hidden"], ["mi", "audio_x"], {"hidden": b, "mi": b, "audio_x": b}))
        graphs["member_ta"].append(_export(TAPart(model), (x_one, t_one, mask), folder / f"ta_{i}.onnx",
                                           ["audio_x", "text_x", "text_mask"], ["ta"],
                                           {"audio_x": b, "text_x": bt, "text_mask": bt, "ta": b}))
    return graphs


def _median_ms(call, repeats: int) -> float:
    call(), call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def time_size(size: str, count: int, batch: int, repeats: int) -> dict[str, float]:
    """Median milliseconds per batch: audio heads and TA heads, joint and per member."""
    import onnxruntime as ort

    _, frames, audio_dim, _ = SIZES[size]
    with tempfile.TemporaryDirectory() as tmp:
        paths = build_graphs(size, count, Path(tmp))
        opened = {k: [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in v] for k, v in paths.items()}
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((batch, frames, audio_dim)).astype(np.float32)
    _, audio_x = opened["joint_audio"][0].run(None, {"hidden": hidden})
    width = audio_x.shape[-1]
    text_x = rng.standard_normal((batch, count, TOKENS, width)).astype(np.float32)
    mask = np.ones((batch, TOKENS), np.int64)

    def per_member_audio():
        outs = [s.run(None, {"hidden": hidden}) for s in opened["member_audio"]]
        return np.stack([o[0] for o in outs], 1), np.stack([o[1] for o in outs], 1)

    def per_member_ta():
        return np.stack([s.run(None, {"audio_x": np.ascontiguousarray(audio_x[:, i]),
                                      "text_x": np.ascontiguousarray(text_x[:, i]), "text_mask": mask})[0]
                         for i, s in enumerate(opened["member_ta"])], 1)

    joint_ta = {"audio_x": audio_x, "text_x": text_x, "text_mask": mask}
    return {"audio_joint_ms": _median_ms(lambda: opened["joint_audio"][0].run(None, {"hidden": hidden}), repeats),
            "audio_per_member_ms": _median_ms(per_member_audio, repeats),
            "ta_joint_ms": _median_ms(lambda: opened["joint_ta"][0].run(None, joint_ta), repeats),
            "ta_per_member_ms": _median_ms(per_member_ta, repeats)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ensemble_heads", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="tiny,builtin", help=f"comma list of {', '.join(SIZES)}")
    p.add_argument("--members", default="4,8", help="comma list of member counts")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args(argv)
    rows = []
    for size in args.sizes.split(","):
        for count in (int(m) for m in args.members.split(",")):
            row = {"size": size, "members": count, "batch": args.batch,
                   **{k: round(v, 3) for k, v in time_size(size, count, args.batch, args.repeats).items()}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
