"""MuQ: front end against the documented torchaudio formulas, structure against the real key record, loader."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from deramos_rt.errors import DeramosError
from training.backbones import create_backbone, load_backbone_weights
from training.backbones.muq import MuQBackbone, MuQMelFrontEnd, _is_ignored, load_muq_state

RECORD = json.loads((Path(__file__).parent.parent / "data" / "muq_keys.json").read_text())
SR = 24000


def reference_db(x: np.ndarray) -> np.ndarray:
    """torchaudio MelSpectrogram(24 kHz, n_fft 2048, hop 240, 128 HTK mels, no norm, power 2) + AmplitudeToDB,
    written out in float64: reflect-centred frames, periodic Hann, |rfft|^2, triangular HTK filters."""
    n_fft, hop, n_mels = 2048, 240, 128
    pad = np.pad(x.astype(np.float64), n_fft // 2, mode="reflect")
    frames = 1 + (len(pad) - n_fft) // hop
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    idx = np.arange(n_fft)[None] + hop * np.arange(frames)[:, None]
    power = np.abs(np.fft.rfft(pad[idx] * window, axis=1)) ** 2
    hz2mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    f_pts = 700 * (10 ** (np.linspace(hz2mel(0), hz2mel(SR / 2), n_mels + 2) / 2595) - 1)
    freqs = np.linspace(0, SR // 2, n_fft // 2 + 1)
    fb = np.zeros((len(freqs), n_mels))
    for m in range(n_mels):
        lo, c, hi = f_pts[m], f_pts[m + 1], f_pts[m + 2]
        fb[:, m] = np.maximum(0, np.minimum((freqs - lo) / (c - lo), (hi - freqs) / (hi - c)))
    return (10 * np.log10(np.maximum(power @ fb, 1e-10))).T[:, :-1]  # MuQ drops the last frame


def _ours_db(x: np.ndarray) -> np.ndarray:
    return MuQMelFrontEnd(0.0, 1.0)(torch.from_numpy(x).float().unsqueeze(0))[0, 0].double().numpy()


def test_front_end_matches_the_formulas_on_noise():
    x = np.random.default_rng(0).uniform(-0.5, 0.5, SR * 2).astype(np.float32)
    ours, ref = _ours_db(x), reference_db(x)
    assert ours.shape == ref.shape == (128, 200)
    assert np.abs(ours - ref).max() < 1e-4


def test_front_end_matches_the_formulas_on_music():
    rng = np.random.default_rng(1)
    t = np.arange(SR * 2) / SR
    x = (0.3 * sum(np.sin(2 * np.pi * 220 * k * t) / k for k in range(1, 8)) * np.exp(-2 * (t % 0.5))
         + 3e-4 * rng.standard_normal(t.size)).astype(np.float32)
    ours, ref = _ours_db(x), reference_db(x)
    err = np.abs(ours - ref)
    # float32 arithmetic (as in torchaudio itself) limits agreement in bands far below the peak.
    assert err[ref > ref.max() - 60].max() < 1e-3
    assert err.max() < 0.05


def test_normalisation_uses_the_checkpoint_statistics():
    x = torch.randn(1, SR)
    raw = MuQMelFrontEnd(0.0, 1.0)(x)
    assert torch.allclose(MuQMelFrontEnd()(x), (raw - 6.768444971712967) / 18.417922652295623, atol=1e-5)


def test_large_model_has_exactly_the_published_keys_and_shapes():
    with torch.device("meta"):
        model = MuQBackbone("large")
    own = {k: list(v.shape) for k, v in model.state_dict().items() if not _is_ignored(k)}
    published = {k: shape for k, (shape, _) in RECORD.items() if not _is_ignored(k)}
    assert own == published
    assert len(RECORD) == 525
    assert 316.0e6 < sum(p.numel() for p in model.parameters()) < 316.7e6


def test_tiny_output_rate_and_batch_independence():
    torch.manual_seed(0)
    model = create_backbone("audio", "muq", size="tiny", clip_seconds=2.0).eval()
    x = torch.randn(3, model.contract.num_samples)
    with torch.no_grad():
        both = model(x)
        alone = model(x[:1])
        x2 = x.clone()
        x2[1:] = torch.randn(2, x.shape[1])
        mates = model(x2)
    assert both.shape == (3, 50, 32)  # 25 frames per second
    assert (both[0] - alone[0]).abs().max() < 1e-5 and (both[0] - mates[0]).abs().max() < 1e-5


def test_encoder_without_a_mask_equals_transformers_forward():
    """MuQ runs the conformer's layers without transformers' (all-zero) mask, which CUDA graphs cannot capture."""
    from training.backbones.muq import unpadded_conformer

    torch.manual_seed(1)
    model = create_backbone("audio", "muq", size="tiny", clip_seconds=2.0).eval()
    hidden = model.model.conv(model.frontend(torch.randn(2, model.contract.num_samples)))
    with torch.no_grad():
        ours = unpadded_conformer(model.model.conformer, hidden)
        theirs = model.model.conformer(hidden).last_hidden_state
    assert torch.equal(ours, theirs)


def _published_style_state(model):
    """The tiny model's tensors plus the keys the real checkpoint carries that we ignore."""
    state = {k: torch.randn_like(v) if v.is_floating_point() and not k.endswith("inv_freq") else v
             for k, v in model.state_dict().items()}
    state["model.cls_token"] = torch.zeros(32)
    state["model.linear.weight"] = torch.zeros(8, 32)
    state["model.rvq.quantizers.0.codebook.weight"] = torch.zeros(4, 2)
    state["model.conformer.pos_conv_embed.conv.bias"] = torch.zeros(32)
    return state


def test_loader_reads_a_hugging_face_folder_and_ignores_exactly_the_unused_keys(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(1)
    ref = MuQBackbone("tiny", clip_seconds=1.0)
    state = _published_style_state(ref)
    for k, v in state.items():
        if k.endswith("running_var"):
            state[k] = v.abs() + 0.5
    save_file(state, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"encoder_dim": 32, "encoder_depth": 2, "conv_dim": 8,
                                                      "w2v2_config": {"num_attention_heads": 4, "intermediate_size": 64},
                                                      "stat": {"melspec_2048_mean": 1.5, "melspec_2048_std": 2.5}}))
    model = create_backbone("audio", "muq", size="tiny", clip_seconds=1.0)
    model.train()
    load_backbone_weights("audio", "muq", model, tmp_path)
    assert not model.training and model.frontend.mean == 1.5 and model.frontend.std == 2.5
    ref.load_state_dict({k: v for k, v in state.items() if k in ref.state_dict()})
    ref.frontend.mean, ref.frontend.std = 1.5, 2.5
    x = torch.randn(2, SR)
    with torch.no_grad():
        assert torch.allclose(model(x), ref.eval()(x), atol=1e-5)


def test_loader_names_bad_keys(tmp_path):
    model = MuQBackbone("tiny", clip_seconds=1.0)
    state = _published_style_state(model)
    del state["model.conv.conv.0.conv1.weight"]
    state["model.conformer.layers.0.extra.weight"] = torch.zeros(1)
    state["model.conv.linear.bias"] = torch.zeros(5)
    with pytest.raises(DeramosError) as err:
        load_muq_state(model, state)
    msg = str(err.value)
    assert "model.conv.conv.0.conv1.weight" in msg and "model.conformer.layers.0.extra.weight" in msg
    assert "model.conv.linear.bias" in msg
    (tmp_path / "config.json").write_text(json.dumps({"encoder_dim": 1024}))
    with pytest.raises(DeramosError, match="lacks valid MuQ sizes: conv_dim, encoder_depth, w2v2_config"):
        load_backbone_weights("audio", "muq", model, tmp_path)


def test_loader_takes_the_encoder_sizes_from_the_folder_config(tmp_path):
    """Any folder in the published layout loads: sizes come from its config.json, not from a size table."""
    from safetensors.torch import save_file

    dims = dict(conv_dim=4, encoder_dim=48, encoder_depth=1, heads=2, ffn=40)
    torch.manual_seed(3)
    ref = MuQBackbone(clip_seconds=1.0, dims=dims).eval()
    state = {k: (v.abs() + 0.5 if k.endswith("running_var") else v) for k, v in _published_style_state(ref).items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    ref.load_state_dict({k: v for k, v in state.items() if k in ref.state_dict()})
    (tmp_path / "config.json").write_text(json.dumps({
        "conv_dim": 4, "encoder_dim": 48, "encoder_depth": 1, "n_mels": 128, "hop_length": 240,
        "w2v2_config": {"num_attention_heads": 2, "intermediate_size": 40, "hidden_size": 1024, "num_hidden_layers": 24}}))
    model = create_backbone("audio", "muq", size="tiny", clip_seconds=1.0)  # resized by the folder's config
    load_backbone_weights("audio", "muq", model, tmp_path)
    assert model.dims == dims and model.size == "custom" and model.contract.hidden_size == 48
    x = 0.1 * torch.randn(2, SR)
    with torch.no_grad():
        assert torch.allclose(model(x), ref(x), atol=1e-5)


def test_published_config_gives_the_large_sizes():
    from training.backbones.muq import SIZES, dims_from_config

    path = Path(__file__).resolve().parents[3] / "shared/reference/muq/muq-large-msd-iter-config.reconstructed.json"
    if not path.is_file():
        pytest.skip(f"the reconstructed published config is not beside the checkout ({path})")
    assert dims_from_config(json.loads(path.read_text())) == SIZES["large"]
