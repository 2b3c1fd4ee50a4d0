"""clap-htsat backbone: front-end parity with ClapFeatureExtractor, the (B, 32, D) sequence, batch
independence, LAION and Hugging Face weight loading (names, shapes, forward parity, refusals), ONNX export.

Everything runs on the "tiny" size with random weights; the "base" size is checked on the meta device.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from deramos_rt.errors import DeramosError
from training.backbones import clap_htsat as ch
from training.backbones import create_backbone, load_backbone_weights

pytest.importorskip("transformers")

KEY_RECORD = Path(__file__).resolve().parents[1] / "data" / "laion_clap_music_keys.json"
N = 480_000


def _signals() -> np.ndarray:
    """(2, N) float32: white noise and a musical signal (plucked harmonic notes, gaps of silence)."""
    rng = np.random.default_rng(0)
    t = np.arange(N) / 48_000
    music = np.zeros(N)
    for f0, start in ((220.0, 0.5), (277.18, 2.0), (329.63, 4.0), (440.0, 6.0), (110.0, 7.5)):
        env = np.clip((t - start) * 50, 0, 1) * np.exp(-np.clip(t - start, 0, None) * 1.5)
        for h in range(1, 9):
            music += 0.1 * env * np.sin(2 * np.pi * f0 * h * t) / h
    noise = 0.1 * rng.standard_normal(N)
    return np.stack([noise, music]).astype(np.float32)


@pytest.fixture(scope="module")
def tiny() -> ch.ClapHtsatBackbone:
    torch.manual_seed(0)
    return ch.ClapHtsatBackbone("tiny").eval()


def _randomize(module: torch.nn.Module, seed: int = 1) -> None:
    """Random values everywhere (the default init zeroes bias tables and batch-norm statistics)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if tensor.is_floating_point():
                values = torch.randn(tensor.shape, generator=gen) * 0.2
                tensor.copy_(values.abs() + 0.5 if name.endswith("running_var") else values)


# ---------------------------------------------------------------------------------------------------
# Front end
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmin", [50.0, 0.0])
def test_front_end_matches_clap_feature_extractor(fmin):
    from transformers import ClapFeatureExtractor

    extractor = ClapFeatureExtractor(truncation="rand_trunc", frequency_min=fmin)
    # The filter banks agree to float64 rounding (both Slaney scale and norm).
    ours = ch.mel_filter_bank(fmin=fmin).numpy()
    assert np.abs(ours - extractor.mel_filters_slaney).max() < 1e-12

    signals = _signals()
    reference = extractor(list(signals), sampling_rate=48_000, return_tensors="np")["input_features"]
    with torch.no_grad():
        features = ch.ClapMelFrontEnd(fmin=fmin)(torch.from_numpy(signals)).numpy()
    assert features.shape == reference.shape == (2, 1, 1001, 64)
    error = np.abs(features - reference)
    # Measured (fmin 50 / 0): 1.9e-5 / 2.7e-5 dB on noise; 9.6e-3 / 8.3e-3 dB on the music, in bins far
    # below the peak (float32 STFT vs the extractor's float64 FFT stored as complex64).
    assert error[0].max() < 2e-4
    assert error.max() < 0.05
    loud = reference >= reference.max(axis=(1, 2, 3), keepdims=True) - 60.0
    assert error[loud].max() < 2e-3  # measured 2.5e-4 / 2.9e-4 dB within 60 dB of each clip's peak


def test_dft_kernels_are_windowed_fourier_rows():
    kernels = ch.dft_kernels(16).squeeze(1).numpy()
    frame = np.random.default_rng(1).standard_normal(16)
    window = np.hanning(17)[:-1]  # periodic Hann
    spectrum = np.fft.rfft(frame * window)
    assert np.allclose(kernels[:9] @ frame, spectrum.real, atol=1e-12)
    assert np.allclose(kernels[9:] @ frame, spectrum.imag, atol=1e-12)


# ---------------------------------------------------------------------------------------------------
# Backbone
# ---------------------------------------------------------------------------------------------------


def test_sequence_shape_and_contract(tiny):
    waveform = torch.from_numpy(_signals())
    with torch.no_grad():
        sequence = tiny(waveform)
        pooled = tiny.audio_model(input_features=tiny.features(waveform)).pooler_output
    assert tiny.contract == ch.AudioContract(48_000, 10.0, 64)
    assert tiny.contract.num_samples == N
    assert sequence.shape == (2, 32, 64) and torch.isfinite(sequence).all()
    # The 32 tokens average to CLAP's clip embedding (pooler_output).
    assert torch.allclose(sequence.mean(dim=1), pooled, atol=1e-6)
    # Time-ordered: silence at the start of the music clip gives different tokens from later notes.
    assert (sequence[1, 0] - sequence[1, 20]).abs().max() > 1e-3


def test_registry_builds_and_rejects(tiny):
    built = create_backbone("audio", "clap-htsat", size="tiny")
    assert isinstance(built, ch.ClapHtsatBackbone) and built.size == "tiny"
    with pytest.raises(DeramosError, match="size"):
        ch.build_audio(size="huge")
    with pytest.raises(DeramosError, match="480000"):
        tiny(torch.zeros(1, 16_000))


def test_base_size_structure():
    with torch.device("meta"):
        base = ch.ClapHtsatBackbone("base")
    assert base.contract == ch.AudioContract(48_000, 10.0, 1024)
    config = base.audio_model.config
    assert (config.patch_embeds_hidden_size, list(config.depths), config.enable_fusion) == (128, [2, 2, 12, 2], False)
    assert sum(p.numel() for p in base.parameters()) == 67_824_408


def test_batch_independence(tiny):
    a, b = torch.from_numpy(_signals())
    c = torch.randn(N) * 0.3
    with torch.no_grad():
        with_b = tiny(torch.stack([a, b]))[0]
        with_c = tiny(torch.stack([c, a, c]))[1]
        alone = tiny(a[None])[0]
    assert (with_b - with_c).abs().max() < 1e-5
    assert (with_b - alone).abs().max() < 1e-5


# ---------------------------------------------------------------------------------------------------
# LAION checkpoints
# ---------------------------------------------------------------------------------------------------

# transformers module path inside a Swin block -> LAION's (written independently of the converter).
_TO_LAION_BLOCK = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.self": "attn",
                   "attention.output.dense": "attn.proj", "intermediate.dense": "mlp.fc1",
                   "output.dense": "mlp.fc2"}


def _to_laion(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ClapAudioModel state -> LAION audio_branch names (q, k, v rows stacked into qkv)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in hf_state.items():
        name = key[len("audio_encoder."):].replace("batch_norm.", "bn0.")
        block = re.match(r"^(layers\.\d+\.blocks\.\d+)\.(.+)\.([^.]+)$", name)
        if block:
            prefix, module, param = block.groups()
            if module.startswith("attention.self.") and module.split(".")[-1] in ("query", "key", "value"):
                if module.endswith("query"):
                    parts = [hf_state[key.replace(".query.", f".{p}.")] for p in ("query", "key", "value")]
                    out[f"{prefix}.attn.qkv.{param}"] = torch.cat(parts)
                continue
            name = f"{prefix}.{_TO_LAION_BLOCK[module]}.{param}"
        out[name] = value
    return out


def _laion_checkpoint(reference, fmin: float = 50.0) -> dict:
    """A LAION-style training checkpoint around ``reference``'s weights, with LAION-only tensors."""
    from transformers import ClapFeatureExtractor

    audio = _to_laion(reference.state_dict())
    n = np.arange(1024)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / 1024)
    dft = np.exp(-2j * np.pi * np.outer(np.arange(513), n) / 1024) * window  # torchlibrosa's conv filters
    audio["spectrogram_extractor.stft.conv_real.weight"] = torch.tensor(dft.real, dtype=torch.float32)[:, None]
    audio["spectrogram_extractor.stft.conv_imag.weight"] = torch.tensor(dft.imag, dtype=torch.float32)[:, None]
    mel = ClapFeatureExtractor(frequency_min=fmin).mel_filters_slaney  # librosa's filters.mel, transposed
    audio["logmel_extractor.melW"] = torch.tensor(mel, dtype=torch.float32)
    audio["layers.0.blocks.1.attn_mask"] = torch.zeros(64, 64, 64)
    audio["tscam_conv.weight"] = torch.randn(527, 64, 2, 3)
    audio["head.weight"] = torch.randn(527, 527)
    state = {f"module.audio_branch.{k}": v for k, v in audio.items()}
    state["module.text_branch.embeddings.word_embeddings.weight"] = torch.randn(10, 4)
    state["module.audio_projection.0.weight"] = torch.randn(4, 64)
    state["module.logit_scale_a"] = torch.tensor(2.0)
    return {"epoch": 15, "state_dict": state}


@pytest.fixture(scope="module")
def reference():
    from transformers import ClapAudioModel

    torch.manual_seed(3)
    model = ClapAudioModel(ch.clap_audio_config("tiny")).eval()
    _randomize(model)
    return model


def _reference_sequence(reference, features):
    with torch.no_grad():
        return reference(input_features=features).last_hidden_state.mean(dim=2).transpose(1, 2)


def test_key_record_converts_to_base_model():
    record = json.loads(KEY_RECORD.read_text())
    state = {record["prefix"] + name: torch.empty(shape, device="meta") for name, shape, _ in record["tensors"]}
    state["module.text_branch.embeddings.word_embeddings.weight"] = torch.empty(50265, 768, device="meta")
    converted = ch.convert_laion_audio_state(state)
    from transformers import ClapAudioModel

    with torch.device("meta"):
        expected = ClapAudioModel(ch.clap_audio_config("base")).state_dict()
    assert sorted(converted) == sorted(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)


def test_laion_checkpoint_matches_reference_forward(tmp_path, reference):
    checkpoint = _laion_checkpoint(reference)
    record_names = {name for name, _, _ in json.loads(KEY_RECORD.read_text())["tensors"]}
    tiny_names = {k[len("module.audio_branch."):] for k in checkpoint["state_dict"] if ".audio_branch." in k}
    assert tiny_names <= record_names  # the tiny depths are a prefix of base's: same LAION names
    path = tmp_path / "music_tiny.pt"
    torch.save(checkpoint, path)

    backbone = ch.ClapHtsatBackbone("tiny")
    load_backbone_weights("audio", "clap-htsat", backbone, path)
    with torch.no_grad():
        features = backbone.features(torch.from_numpy(_signals()))
        ours = backbone.encode(features)
    assert (ours - _reference_sequence(reference, features)).abs().max() < 1e-6


def test_laion_front_end_mismatch_is_refused(tmp_path, reference):
    path = tmp_path / "other_fmin.pt"
    torch.save(_laion_checkpoint(reference, fmin=0.0), path)
    with pytest.raises(DeramosError, match="logmel_extractor.melW.*fmin"):
        ch.load_audio_weights(ch.ClapHtsatBackbone("tiny"), path)


def test_laion_bad_keys_and_shapes_are_named(tmp_path, reference):
    checkpoint = _laion_checkpoint(reference)
    state = checkpoint["state_dict"]
    del state["module.audio_branch.layers.0.blocks.0.norm1.weight"]
    state["module.audio_branch.layers.1.blocks.0.attn.extra.weight"] = torch.zeros(3)
    state["module.audio_branch.patch_embed.proj.weight"] = torch.zeros(128, 1, 4, 4)
    path = tmp_path / "broken.pt"
    torch.save(checkpoint, path)
    with pytest.raises(DeramosError) as caught:
        ch.load_audio_weights(ch.ClapHtsatBackbone("tiny"), path)
    message = str(caught.value)
    assert "missing keys: audio_encoder.layers.0.blocks.0.layernorm_before.weight" in message
    assert "unexpected keys: audio_encoder.layers.1.blocks.0.attn.extra.weight" in message
    assert "audio_encoder.patch_embed.proj.weight: file (128, 1, 4, 4) vs model (8, 1, 4, 4)" in message


def test_pickled_code_and_foreign_files_are_refused(tmp_path, reference):
    checkpoint = _laion_checkpoint(reference)
    checkpoint["args"] = argparse.Namespace(lr=1e-4)  # loading it would need code
    torch.save(checkpoint, tmp_path / "pickled.pt")
    with pytest.raises(DeramosError, match="refusing"):
        ch.load_audio_weights(ch.ClapHtsatBackbone("tiny"), tmp_path / "pickled.pt")
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(DeramosError, match="audio_branch"):
        ch.load_audio_weights(ch.ClapHtsatBackbone("tiny"), tmp_path / "other.pt")


# ---------------------------------------------------------------------------------------------------
# Hugging Face folders
# ---------------------------------------------------------------------------------------------------


def test_hf_audio_model_folder(tmp_path, reference):
    reference.save_pretrained(tmp_path / "audio")
    assert (tmp_path / "audio" / "model.safetensors").is_file()
    backbone = ch.ClapHtsatBackbone("tiny")
    ch.load_audio_weights(backbone, tmp_path / "audio")
    with torch.no_grad():
        features = backbone.features(torch.from_numpy(_signals()))
        assert (backbone.encode(features) - _reference_sequence(reference, features)).abs().max() < 1e-6


def _clap_model_folder(folder: Path, reference, **audio_overrides) -> Path:
    """A ClapModel-style folder: audio_model.* next to text and projection tensors."""
    from safetensors.torch import save_file

    folder.mkdir()
    state = {f"audio_model.{k}": v.contiguous() for k, v in reference.state_dict().items()}
    state["text_model.embeddings.word_embeddings.weight"] = torch.zeros(10, 4)
    state["audio_projection.linear1.weight"] = torch.zeros(4, 64)
    state["logit_scale_a"] = torch.tensor(1.0)
    save_file(state, str(folder / "model.safetensors"))
    audio_config = {**reference.config.to_dict(), **audio_overrides}
    (folder / "config.json").write_text(json.dumps({"model_type": "clap", "audio_config": audio_config}))
    return folder


def test_hf_clap_model_folder(tmp_path, reference):
    folder = _clap_model_folder(tmp_path / "clap", reference)
    (folder / "preprocessor_config.json").write_text(json.dumps({"frequency_min": 50, "sampling_rate": 48000}))
    backbone = ch.ClapHtsatBackbone("tiny")
    ch.load_audio_weights(backbone, folder)
    with torch.no_grad():
        features = backbone.features(torch.from_numpy(_signals()[:1]))
        assert (backbone.encode(features) - _reference_sequence(reference, features)).abs().max() < 1e-6


def test_hf_folder_refusals(tmp_path, reference):
    other = _clap_model_folder(tmp_path / "htsat_tiny", reference, depths=[2, 2, 6, 2], enable_fusion=True)
    with pytest.raises(DeramosError, match=r"depths \[2, 2, 6, 2\].*enable_fusion True"):
        ch.load_audio_weights(ch.ClapHtsatBackbone("tiny"), other)
    folder = _clap_model_folder(tmp_path / "fmin0", reference)
    (folder / "preprocessor_config.json").write_text(json.dumps({"frequency_min": 0}))
    with pytest.raises(DeramosError, match="frequency_min 0"):
        ch.load_audio_weights(ch.ClapHtsatBackbone("tiny"), folder)
    # Absent fields mean ClapAudioConfig's defaults (HTSAT-tiny: width 96, depths 2-2-6-2).
    (folder / "config.json").write_text(json.dumps({"model_type": "clap_audio_model"}))
    with pytest.raises(DeramosError, match=r"patch_embeds_hidden_size 96 \(backbone: 8\)"):
        ch.load_audio_weights(ch.ClapHtsatBackbone("tiny"), folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeramosError, match="config.json is missing"):
        ch.load_audio_weights(ch.ClapHtsatBackbone("tiny"), tmp_path / "empty")


# ---------------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dynamo", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_onnx_export_with_dynamic_batch(tmp_path, tiny, dynamo):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript" if dynamo else "onnx")
    path = tmp_path / "clap_tiny.onnx"
    # A batch-2 example: torch.export specialises a dimension of size 1, which would fix the batch.
    example = (torch.from_numpy(_signals()),)
    if dynamo:
        torch.onnx.export(tiny, example, str(path), input_names=["waveform"], output_names=["hidden"],
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=64)},), dynamo=True)
    else:
        torch.onnx.export(tiny, example, str(path), input_names=["waveform"], output_names=["hidden"],
                          dynamic_axes={"waveform": {0: "batch"}, "hidden": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = np.concatenate([_signals(), 0.3 * np.random.default_rng(2).standard_normal((1, N))]).astype(np.float32)
    (hidden,) = session.run(None, {"waveform": batch})
    with torch.no_grad():
        expected = tiny(torch.from_numpy(batch)).numpy()
    assert hidden.shape == (3, 32, 64)
    # Measured 1.7e-4 (both exporters) on outputs up to 2.8: the float32 STFT differs in bins ~100 dB
    # below the peak and onnxruntime's bicubic Resize rounds differently from torch.
    assert np.abs(hidden - expected).max() < 1e-3
