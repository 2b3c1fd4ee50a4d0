"""Small synthetic corpora in the MusicEval layout, for tests and the quickstart.

Each clip is a pulsed tone (low or high pitch, slow or fast pulse) plus noise. Its prompt names a pitch
and a pulse ("a calm low tone with a slow beat"). The labels are learnable:

* MI falls with the clip's noise level (a per-system level times a per-clip factor);
* TA rises with how many of the prompt's two attributes (pitch, pulse) the audio actually has (a
  system's ``faithfulness`` is the probability that each attribute matches) and falls with noise, which
  masks what the prompt asked for (in MusicEval, too, TA correlates with MI).

Both are averaged over 5 noisy simulated raters and rounded to the 0.2 grid, like MusicEval.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

PITCH = {"low": (110.0, 220.0), "high": (880.0, 1760.0)}
PULSE = {"slow": 2.0, "fast": 8.0}
MOOD = ["calm", "gentle", "lively", "bright", "dark", "quiet"]


def _tone(rng: np.random.Generator, pitch: str, pulse: str, noise: float, sr: int, seconds: float) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    f0 = rng.uniform(*PITCH[pitch])
    envelope = 0.5 * (1 + np.sign(np.sin(2 * np.pi * PULSE[pulse] * t)))  # on/off: frames differ over time
    tone = sum(np.sin(2 * np.pi * f0 * k * t + rng.uniform(0, 6.28)) / k for k in (1, 2, 3))
    signal = 0.3 * envelope * tone / 1.8 + noise * rng.standard_normal(t.size)
    return np.clip(signal, -1, 1).astype(np.float32)


def _rate(rng: np.random.Generator, latent: float) -> float:
    """Mean of 5 raters (bias + noise), clipped to [1, 5] and rounded to the 0.2 grid."""
    ratings = np.clip(latent + rng.normal(0, 0.2, 5) + rng.normal(0, 0.3, 5), 1, 5)
    return float(np.clip(np.round(ratings.mean() / 0.2) * 0.2, 1, 5))


def make_fixture_corpus(root: str | Path, n_train: int = 48, n_dev: int = 16, n_test: int = 16,
                        systems: int = 6, seed: int = 0, sample_rate: int = 16000, seconds: float = 2.0) -> Path:
    """Write a MusicEval-layout corpus and return its root.

    Args:
        root: output folder (created).
        n_train, n_dev, n_test: clips per split.
        systems: number of simulated systems S001...
        seed: everything is deterministic for a seed.
        sample_rate, seconds: audio format of the clips.
    """
    import soundfile as sf

    rng = np.random.default_rng(seed)
    root = Path(root)
    (root / "wav").mkdir(parents=True, exist_ok=True)
    (root / "sets").mkdir(exist_ok=True)
    # Twice as many prompts as one system needs, so (system, prompt) pairs are unique and plentiful.
    n_prompts = max(4, 2 * -(-(n_train + n_dev + n_test) // systems))
    prompts = [(rng.choice(list(PITCH)), rng.choice(list(PULSE)), rng.choice(MOOD)) for _ in range(n_prompts)]
    with (root / "prompt_info.txt").open("w") as f:
        f.write("id\ttext\n")
        for i, (pitch, pulse, mood) in enumerate(prompts, start=1):
            f.write(f"P{i:03d}\ta {mood} {pitch} tone with a {pulse} beat\n")
    noise_level = np.linspace(0.005, 0.25, systems)
    faithfulness = rng.uniform(0.3, 1.0, systems)
    rows, used = [], set()
    for _ in range(n_train + n_dev + n_test):
        s, p = int(rng.integers(systems)), int(rng.integers(n_prompts))
        while (s, p) in used:
            s, p = int(rng.integers(systems)), int(rng.integers(n_prompts))
        used.add((s, p))
        pitch, pulse, _ = prompts[p]
        match_pitch, match_pulse = rng.random() < faithfulness[s], rng.random() < faithfulness[s]
        noise = noise_level[s] * rng.uniform(0.5, 1.5)
        audio = _tone(rng, pitch if match_pitch else _other(pitch, PITCH), pulse if match_pulse else _other(pulse, PULSE),
                      noise, sample_rate, seconds)
        wav_id = f"audiomos2025-track1-S{s + 1:03d}_P{p + 1:03d}"
        sf.write(root / "wav" / f"{wav_id}.wav", audio, sample_rate, subtype="PCM_16")
        mi = _rate(rng, 4.8 - 14.0 * noise)
        ta = _rate(rng, 1.6 + 1.4 * match_pitch + 1.4 * match_pulse - 5.0 * noise)
        rows.append(f"{wav_id}.wav,{mi:.1f},{ta:.1f}")
    splits = {"train": rows[:n_train], "dev": rows[n_train : n_train + n_dev], "test": rows[n_train + n_dev :]}
    for split, lines in splits.items():
        (root / "sets" / f"{split}_mos_list.txt").write_text("\n".join(lines) + "\n")
    return root


def _other(value: str, options: dict) -> str:
    return next(k for k in options if k != value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a small synthetic MusicEval-layout corpus.")
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=48)
    parser.add_argument("--dev", type=int, default=16)
    parser.add_argument("--test", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    root = make_fixture_corpus(args.out, args.train, args.dev, args.test, seed=args.seed)
    print(root)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
