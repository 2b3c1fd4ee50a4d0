"""Parity of exported graphs with the torch model.

:func:`compare_onnx` checks one encoder graph on random waveforms. The bundle's parity gate
(:func:`parity_inputs`, :func:`torch_scores`, :func:`backend_scores`, :func:`compare_scores`) runs the
whole path a user runs: generated audio files -> ``deramos_rt.audio.load_clip`` with the bundle's protocol
-> a backend -> expected scores (``probs @ bins``), against the torch model in fp32, over several batch
sizes (1 and larger, with padded prompts) so that no batch size is baked into a graph unnoticed. For an
ensemble (``training.ensemble``) each member is scored by its own torch model and compared member by member,
and the ensemble's scores (the expected score of the mean distribution, ``deramos_rt.ensemble``) as well.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

# Limits of the parity gate: max |delta MOS| against torch fp32, and the SRCC floor where one applies.
LIMITS = {"fp32": {"max_abs": 1e-3, "srcc": None},
          "fp16": {"max_abs": 0.02, "srcc": None},
          "int8": {"max_abs": 0.05, "srcc": 0.99}}
# The backend is run with these batch sizes in turn, so batch 1 and larger batches are both exercised.
BATCH_PATTERN = (1, 7, 3)
_WORDS = ("calm energetic sad happy slow fast loud soft dark bright piano guitar violin drums synth choir "
          "jazz rock ambient classical folk techno orchestral melody rhythm song track with and a the of "
          "lively gentle tense epic lo-fi acoustic electric bass strings flute").split()


def compare_onnx(backbone: torch.nn.Module, onnx_path: str | Path, batch_sizes=(1, 2), seed: int = 0) -> dict:
    """Run torch and ONNX Runtime (CPU) on the same waveforms.

    Returns:
        ``{batch_size: {"max_abs": float, "max_rel": float}}`` where ``max_rel`` is the max absolute error
        divided by the max absolute torch output.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    report = {}
    for batch in batch_sizes:
        wave = (0.1 * torch.randn(batch, backbone.contract.num_samples, generator=generator)).float()
        with torch.no_grad():
            expected = backbone.eval()(wave).numpy()
        got = session.run(["hidden"], {"waveform": wave.numpy()})[0]
        err = float(np.abs(got - expected).max())
        report[batch] = {"max_abs": err, "max_rel": err / float(np.abs(expected).max())}
    return report


@dataclass
class ParityInputs:
    """What the parity gate scores.

    Attributes:
        waveforms: (M, N) float32 model inputs (files through the protocol, then random signals).
        sources: M labels (file name or ``random:<i>``).
        prompts: P prompts.
        pairs: (Q, 2) int rows of (waveform index, prompt index) for TA.
    """

    waveforms: np.ndarray
    sources: list[str]
    prompts: list[str]
    pairs: np.ndarray


def write_test_clips(folder: str | Path, count: int = 8, seed: int = 0) -> list[Path]:
    """Write ``count`` WAV files: tones, chords, noise and music-like notes at several rates and lengths."""
    import soundfile as sf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rates = (16000, 22050, 44100, 48000, 24000, 32000)
    paths = []
    for i in range(count):
        rate = rates[i % len(rates)]
        seconds = float(rng.uniform(1.0, 12.0))
        t = np.arange(int(rate * seconds)) / rate
        kind = i % 4
        if kind == 0:  # a steady tone
            signal = 0.5 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t)
        elif kind == 1:  # a chord with tremolo
            signal = sum(np.sin(2 * np.pi * f * t) for f in rng.uniform(150, 900, 3)) / 3
            signal *= 0.6 + 0.4 * np.sin(2 * np.pi * 3 * t)
        elif kind == 2:  # noise at some level
            signal = rng.uniform(0.01, 0.5) * rng.standard_normal(t.shape)
        else:  # a melody of decaying notes
            notes = 220.0 * 2 ** (rng.integers(0, 24, int(seconds * 4) + 1) / 12)
            step = (t * 4).astype(int)
            signal = 0.5 * np.sin(2 * np.pi * notes[step] * t) * np.exp(-6 * ((t * 4) % 1))
        if i % 3 == 2:  # some stereo files, channels slightly different
            signal = np.stack([signal, 0.8 * signal + 0.01 * rng.standard_normal(t.shape)], axis=1)
        path = folder / f"clip{i:02d}_{rate}.wav"
        sf.write(str(path), signal.astype(np.float32), rate)
        paths.append(path)
    return paths


def parity_prompts(count: int = 8, seed: int = 0) -> list[str]:
    """Fixed prompts plus seeded random word salads of varied length."""
    fixed = ["A calm piano piece with a slow tempo.", "Energetic rock song with loud drums and electric guitar",
             "ambient", "Sad violin melody, minor key, very quiet and gentle; lo-fi texture."]
    rng = np.random.default_rng(seed)
    extra = [" ".join(rng.choice(_WORDS, int(rng.integers(2, 30)))) for _ in range(max(0, count - len(fixed)))]
    return (fixed + extra)[:count]


def parity_inputs(protocol, folder: str | Path, files: int = 8, random_clips: int = 24, prompts: int = 8,
                  seed: int = 0) -> ParityInputs:
    """Generated WAV files through ``load_clip`` plus random signals, prompts, and every clip-prompt pair
    needed to reach at least 32 TA items."""
    from deramos_rt.audio import load_clip

    paths = write_test_clips(folder, files, seed)
    waves = [load_clip(p, protocol) for p in paths]
    rng = np.random.default_rng(seed + 1)
    n = protocol.num_samples
    for i in range(random_clips):
        scale = float(rng.uniform(0.01, 0.8))
        wave = scale * rng.standard_normal(n) if i % 2 else scale * np.sin(
            2 * np.pi * rng.uniform(50, 4000) * np.arange(n) / protocol.sample_rate)
        waves.append(wave.astype(np.float32))
    texts = parity_prompts(prompts, seed)
    m = len(waves)
    q = max(32, m)
    # Every clip at least once, prompts rotating so that clips meet different prompts.
    pairs = np.array([(i % m, (i + i // m) % len(texts)) for i in range(q)], dtype=np.int64)
    return ParityInputs(np.stack(waves), [p.name for p in paths] + [f"random:{i}" for i in range(random_clips)],
                        texts, pairs)


def scores_from_outputs(mi: np.ndarray, ta: np.ndarray, bins: np.ndarray | None,
                        ensemble: bool) -> dict[str, np.ndarray]:
    """Expected scores from raw head outputs: ``{"mi", "ta"}`` (one per item), and for an ensemble the
    ensemble's scores (expected score of the mean distribution) plus ``members`` ``{"mi", "ta"}`` (items, M)."""
    from deramos_rt.ensemble import add_member_axis, combine

    if not ensemble:
        mi, ta = add_member_axis(mi, bins), add_member_axis(ta, bins)
    mi_c, ta_c = combine(mi, bins), combine(ta, bins)
    out = {"mi": mi_c.score, "ta": ta_c.score}
    if ensemble:
        out["members"] = {"mi": mi_c.members, "ta": ta_c.members}
    return out


def _is_ensemble(model) -> bool:
    return hasattr(model, "parts")


def torch_scores(model, inputs: ParityInputs, tokenizer, chunk: int = 8) -> dict[str, np.ndarray]:
    """MI per waveform and TA per pair from the torch model (fp32, its own batching).

    For an ensemble every member is scored by its own model (``training.split`` parts of that member, not
    the ensemble's parts), so the gate checks the ensemble graphs against each member independently.
    """
    bins = _bins(model)
    if not _is_ensemble(model):
        return scores_from_outputs(*_torch_outputs(model, inputs, tokenizer, chunk), bins, ensemble=False)
    outputs = [_torch_outputs(model.member(i), inputs, tokenizer, chunk) for i in range(len(model))]
    mi, ta = (np.stack([o[k] for o in outputs], axis=1) for k in (0, 1))
    return scores_from_outputs(mi, ta, bins, ensemble=True)


def _torch_outputs(model, inputs: ParityInputs, tokenizer, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw MI (per waveform) and TA (per pair) head outputs of one model."""
    from training.split import split_model

    audio, text, ta = split_model(model)
    mi, audio_x = [], []
    with torch.no_grad():
        for start in range(0, len(inputs.waveforms), chunk):
            m, x = audio(torch.from_numpy(inputs.waveforms[start:start + chunk]))
            mi.append(m.numpy())
            audio_x.append(x.numpy())
        audio_x = np.concatenate(audio_x)
        tokens = tokenizer(inputs.prompts)
        text_x = text(torch.from_numpy(tokens.input_ids), torch.from_numpy(tokens.attention_mask)).numpy()
        a, p = inputs.pairs[:, 0], inputs.pairs[:, 1]
        ta_out = [ta(torch.from_numpy(audio_x[a[s:s + chunk]]), torch.from_numpy(text_x[p[s:s + chunk]]),
                     torch.from_numpy(tokens.attention_mask[p[s:s + chunk]])).numpy()
                  for s in range(0, len(a), chunk)]
    return np.concatenate(mi), np.concatenate(ta_out)


def _bins(model) -> np.ndarray | None:
    cfg = model.config
    if cfg.head != "distribution":
        return None
    return np.linspace(cfg.bin_min, cfg.bin_max, cfg.num_bins)


def _chunks(total: int, pattern=BATCH_PATTERN):
    start, i = 0, 0
    while start < total:
        size = pattern[i % len(pattern)]
        yield slice(start, min(total, start + size))
        start += size
        i += 1


def backend_scores(backend, inputs: ParityInputs, tokenizer, bins: np.ndarray | None,
                   ensemble: bool = False) -> dict[str, np.ndarray]:
    """MI and TA from a backend, fed the way a scorer feeds it: varied batch sizes, prompts padded per batch.

    ``ensemble``: the backend runs an ensemble bundle (a member axis at dim 1 of every output; ``text_x``
    is (B, M, L, d)); the result then has the members' scores too (see :func:`scores_from_outputs`).
    """
    mi, audio_x = [], []
    for s in _chunks(len(inputs.waveforms)):
        m, x = backend.run_audio(inputs.waveforms[s])
        mi.append(m)
        audio_x.append(x)
    audio_x = np.concatenate(audio_x)
    text_x = {}
    for s in _chunks(len(inputs.prompts)):
        tokens = tokenizer(inputs.prompts[s])
        out = backend.run_text(tokens.input_ids, tokens.attention_mask)
        for row, index in enumerate(range(s.start, s.stop)):
            text_x[index] = out[row, ..., : int(tokens.attention_mask[row].sum()), :]  # tokens: second to last
    ta = []
    for s in _chunks(len(inputs.pairs)):
        rows = inputs.pairs[s]
        batch_text, mask = _pad_text([text_x[p] for p in rows[:, 1]])
        ta.append(backend.run_ta(audio_x[rows[:, 0]], batch_text, mask))
    return scores_from_outputs(np.concatenate(mi), np.concatenate(ta), bins, ensemble)


def _pad_text(seqs: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Zero-pad ``(..., L_i, d)`` text features on their token axis (second to last), with a (B, L) mask."""
    length = max(x.shape[-2] for x in seqs)
    batch = np.zeros((len(seqs), *seqs[0].shape[:-2], length, seqs[0].shape[-1]), np.float32)
    mask = np.zeros((len(seqs), length), np.int64)
    for r, x in enumerate(seqs):
        batch[r, ..., : x.shape[-2], :] = x
        mask[r, : x.shape[-2]] = 1
    return batch, mask


def srcc(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman's rank correlation (None when either side is constant)."""
    from scipy.stats import spearmanr

    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(spearmanr(a, b).statistic)


def compare_scores(reference: dict, got: dict, names: list[str] | None = None) -> dict:
    """``{mi|ta: {max_abs, mean_abs, srcc, n}}`` of a variant's scores against the torch reference.

    For an ensemble (``members`` in both), ``members`` lists the same figures per member (with its name).
    """
    out = {key: _compare(reference[key], got[key]) for key in ("mi", "ta")}
    if "members" in reference and "members" in got:
        count = reference["members"]["mi"].shape[1]
        names = names or [str(i) for i in range(count)]
        out["members"] = [{"name": names[i], **{key: _compare(reference["members"][key][:, i], got["members"][key][:, i])
                                                for key in ("mi", "ta")}} for i in range(count)]
    return out


def _compare(reference: np.ndarray, got: np.ndarray) -> dict:
    delta = np.abs(got - reference)
    return {"max_abs": float(delta.max()), "mean_abs": float(delta.mean()), "srcc": srcc(reference, got),
            "n": int(delta.size)}


def gate(precision: str, report: dict) -> str | None:
    """None when ``report`` (from :func:`compare_scores`) meets the precision's limits, else why not.

    An ensemble passes only when the ensemble's scores and every member's scores do.
    """
    reason = _gate_one(precision, report)
    if reason is not None:
        return reason if "members" not in report else f"ensemble: {reason}"
    for member in report.get("members", []):
        reason = _gate_one(precision, member)
        if reason is not None:
            return f"member {member['name']}: {reason}"
    return None


def _gate_one(precision: str, report: dict) -> str | None:
    limit = LIMITS[precision]
    for key in ("mi", "ta"):
        entry = report[key]
        if not np.isfinite(entry["max_abs"]) or entry["max_abs"] > limit["max_abs"]:
            return f"{key.upper()} max |delta MOS| {entry['max_abs']:.3g} > {limit['max_abs']:g}"
        floor = limit["srcc"]
        if floor is not None and (entry["srcc"] is None or entry["srcc"] < floor):
            return f"{key.upper()} SRCC {entry['srcc']} < {floor} against torch fp32 (n={entry['n']})"
    return None
