"""A demo corpus of real rendered music with simulated text-to-music systems, in the MusicEval layout.

``python -m training.democorpus --out DIR [--clips N] [--seed S] [--workers W] [--overwrite]``

``--out`` must be a new or empty folder; ``--overwrite`` replaces a corpus already there (its ``wav/``,
``sets/`` and prompt tables; nothing else in the folder is touched).

No MusicEval audio can be downloaded here, so this renders its own: scores from music21's bundled corpus
are given a General MIDI instrument and a tempo and rendered offline by fluidsynth (Debian
``libfluidsynth3`` + ``timgm6mb-soundfont``). Each prompt P### describes one rendering (instrument,
tempo, mode / mood, style); each simulated system S### renders every prompt with its own defects:
degradations drive MI, mismatches with the prompt drive TA, and some systems fail outright the way real
generators do. The exact generative model of the labels is in ``docs/democorpus.md``.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deramos_rt.errors import DeramosError
from deramos_rt.console import run_cli, setup_logging, step

log = logging.getLogger(__name__)
SR = 16000  # MusicEval's rate
SOUNDFONTS = ("/usr/share/sounds/sf2/TimGM6mb.sf2", "/usr/share/sounds/sf2/FluidR3_GM.sf2",
              "/usr/share/sounds/sf2/default-GM.sf2")
# music21 corpus collections: (composer key, style phrase, instruments that suit it).
SOURCES = [
    ("bach", "Baroque chorale", ["organ", "strings", "choir", "brass", "piano"]),
    ("palestrina", "Renaissance sacred polyphony", ["choir", "organ", "strings"]),
    ("trecento", "medieval Italian song", ["harp", "flute", "strings", "guitar"]),
    ("ryansMammoth", "traditional fiddle tune", ["violin", "flute", "accordion", "guitar", "piano"]),
    ("mozart", "Classical string quartet movement", ["strings", "piano", "clarinet"]),
]
# name: (GM program, family, phrase used in prompts)
INSTRUMENTS = {
    "piano": (0, "keys", "solo piano"), "organ": (19, "keys", "church organ"),
    "accordion": (21, "keys", "accordion"), "guitar": (24, "plucked", "nylon-string guitar"),
    "harp": (46, "plucked", "harp"), "violin": (40, "strings", "violin"),
    "strings": (48, "strings", "a string ensemble"), "choir": (52, "voice", "a choir"),
    "brass": (61, "brass", "a brass section"), "clarinet": (71, "winds", "clarinet"),
    "flute": (73, "winds", "flute"),
}
TEMPI = {"slow": (58, 76), "moderate": (88, 108), "fast": (126, 150)}
MOODS = {("major", "slow"): "serene", ("major", "moderate"): "warm", ("major", "fast"): "cheerful",
         ("minor", "slow"): "melancholic", ("minor", "moderate"): "wistful", ("minor", "fast"): "dramatic"}
DEGRADATIONS = ("noise", "clipping", "bandlimit", "bitdepth", "dropouts", "wobble", "smear")
MI_WEIGHT = {"noise": 2.2, "clipping": 1.8, "bandlimit": 1.3, "bitdepth": 1.6, "dropouts": 1.5,
             "wobble": 1.6, "smear": 1.2}
FAILURES = ("silence", "noise_burst", "clicks", "held_tone", "babble", "early_stop")
FAILURE_MI = {"silence": 1.0, "noise_burst": 1.2, "clicks": 1.4, "held_tone": 1.6, "babble": 1.3}
FAILURE_TA = {"silence": 1.0, "noise_burst": 1.1, "clicks": 1.2, "held_tone": 1.5, "babble": 1.3}


@dataclass(frozen=True)
class SystemProfile:
    """A simulated text-to-music system.

    Attributes:
        name: short description.
        degrade: degradation -> (min, max) severity in [0, 1], drawn uniformly per clip.
        mismatch: probability per clip of a wrong instrument / tempo / mood.
        failures: failure mode -> probability per clip.
    """

    name: str
    degrade: dict = field(default_factory=dict)
    mismatch: tuple[float, float, float] = (0.05, 0.05, 0.05)
    failures: dict = field(default_factory=dict)


SYSTEMS = [
    SystemProfile("near-reference renderer"),
    SystemProfile("mild hiss", {"noise": (0.1, 0.4)}),
    SystemProfile("lo-fi codec", {"bandlimit": (0.4, 0.9), "bitdepth": (0.3, 0.7)}, (0.1, 0.1, 0.1)),
    SystemProfile("over-driven", {"clipping": (0.4, 1.0)}, (0.15, 0.1, 0.1)),
    SystemProfile("worn tape", {"wobble": (0.3, 1.0), "noise": (0.0, 0.3)}),
    SystemProfile("smeared codec", {"smear": (0.4, 1.0), "bandlimit": (0.0, 0.4)}),
    SystemProfile("unstable stream", {"dropouts": (0.3, 1.0)}, (0.1, 0.1, 0.1)),
    SystemProfile("ignores prompts", {"noise": (0.0, 0.15)}, (0.6, 0.5, 0.5)),
    SystemProfile("everything wrong", {d: (0.05, 0.35) for d in DEGRADATIONS}, (0.4, 0.3, 0.3)),
    SystemProfile("collapses often", {"noise": (0.0, 0.3)}, (0.2, 0.2, 0.2),
                  {"silence": 0.15, "noise_burst": 0.15, "babble": 0.15}),
    SystemProfile("stops early", {"dropouts": (0.0, 0.4)}, (0.1, 0.1, 0.1), {"early_stop": 0.5, "clicks": 0.15}),
    SystemProfile("stuck notes", {"noise": (0.1, 0.5)}, (0.3, 0.2, 0.2), {"held_tone": 0.3, "babble": 0.1}),
]


def find_soundfont() -> str:
    for path in SOUNDFONTS:
        if Path(path).is_file():
            return path
    raise DeramosError("no General MIDI soundfont found; install the Debian package timgm6mb-soundfont "
                       f"(looked for {', '.join(SOUNDFONTS)})")


def _synth(soundfont: str):
    try:
        import fluidsynth
    except (ImportError, OSError) as exc:
        raise DeramosError(f"cannot use fluidsynth ({exc}); install pyfluidsynth (extra 'demo') and the Debian "
                           "package libfluidsynth3") from None
    synth = fluidsynth.Synth(samplerate=float(SR), gain=0.4)
    return synth, synth.sfload(soundfont)


# ---------------------------------------------------------------------------------------------------
# Scores and rendering
# ---------------------------------------------------------------------------------------------------

def choose_prompts(n: int, rng: np.random.Generator) -> list[dict]:
    """Draw n (piece, instrument, tempo) prompt specs; the piece's mode is read when it is parsed."""
    from music21 import corpus

    pool = [(src, str(p)) for src in SOURCES for p in sorted(corpus.getComposer(src[0]), key=str)]
    picks = rng.choice(len(pool), size=n, replace=n > len(pool))
    specs = []
    for i in picks:
        (composer, style, instruments), path = pool[int(i)]
        tempo = str(rng.choice(list(TEMPI)))
        specs.append({"path": path, "style": style, "instrument": str(rng.choice(instruments)), "tempo": tempo,
                      "bpm": float(rng.uniform(*TEMPI[tempo]))})
    return specs


def read_notes(path: str) -> tuple[list[tuple[float, float, int]], str, str]:
    """(onset quarter, duration quarter, MIDI pitch) for every note of a score, its mode and key name."""
    from music21 import converter

    score = converter.parse(path)
    notes = []
    for element in score.flatten().notes:
        duration = max(float(element.duration.quarterLength), 0.25)
        for pitch in element.pitches:
            notes.append((float(element.offset), duration, int(pitch.midi)))
    if not notes:
        raise DeramosError(f"score has no notes: {path}")
    key = score.analyze("key")
    return sorted(notes), str(key.mode if key.mode in ("major", "minor") else "major"), f"{key.tonic.name} {key.mode}"


def render(synth, sfid, notes, program: int, bpm: float, seconds: float, invert: bool = False) -> np.ndarray:
    """Render notes (looped to fill ``seconds``) with one GM program at ``bpm``; mono float32 at 16 kHz."""
    sec_per_q = 60.0 / bpm
    span = max(o + d for o, d, _ in notes)
    axis = notes[0][2]
    events = []
    for loop in range(int(seconds / (span * sec_per_q)) + 1):
        for onset, dur, pitch in notes:
            start = (onset + loop * span) * sec_per_q
            if start >= seconds:
                continue
            pitch = int(np.clip(2 * axis - pitch if invert else pitch, 21, 108))
            events += [(start, 1, pitch), (min(start + dur * sec_per_q * 0.95, seconds), 0, pitch)]
    synth.system_reset()
    synth.program_select(0, sfid, 0, program)
    chunks, cursor = [], 0
    for t, on, pitch in sorted(events, key=lambda e: (e[0], e[1])):
        frame = int(t * SR)
        if frame > cursor:
            chunks.append(synth.get_samples(frame - cursor))
            cursor = frame
        synth.noteon(0, pitch, 80) if on else synth.noteoff(0, pitch)
    total = int(seconds * SR)
    if total > cursor:
        chunks.append(synth.get_samples(total - cursor))
    stereo = np.concatenate(chunks).astype(np.float32).reshape(-1, 2)[:total] / 32768.0
    mono = stereo[:, 0] + stereo[:, 1]
    peak = np.abs(mono).max()
    return (mono / peak * 0.7).astype(np.float32) if peak > 0 else mono


# ---------------------------------------------------------------------------------------------------
# Degradations and failures (severity in [0, 1])
# ---------------------------------------------------------------------------------------------------

def degrade(x: np.ndarray, kind: str, sev: float, rng: np.random.Generator) -> np.ndarray:
    n = x.size
    if kind == "noise":  # SNR from 40 dB (sev 0) down to 5 dB (sev 1)
        snr = 40 - 35 * sev
        return x + rng.standard_normal(n).astype(np.float32) * np.sqrt(np.mean(x**2) / 10 ** (snr / 10))
    if kind == "clipping":
        return np.clip(x * (1 + 9 * sev), -0.7, 0.7)
    if kind == "bandlimit":  # brick-wall low-pass from 8 kHz down to 1.2 kHz
        spec = np.fft.rfft(x)
        spec[int(spec.size * (1 - 0.85 * sev)):] = 0
        return np.fft.irfft(spec, n).astype(np.float32)
    if kind == "bitdepth":  # 16 bits down to 3
        levels = 2 ** (16 - 13 * sev)
        return np.round(x * levels) / levels
    if kind == "dropouts":
        y = x.copy()
        for _ in range(int(round(1 + 8 * sev))):
            start, length = rng.integers(0, n), int(rng.uniform(0.05, 0.3) * SR)
            y[start : start + length] = 0
        return y
    if kind == "wobble":  # wow and flutter: a slowly varying playback rate, up to about 5 % pitch deviation
        t = np.arange(n)
        rate = rng.uniform(0.5, 4.0)
        offset = 0.002 * sev * SR * np.sin(2 * np.pi * rate * t / SR)
        return np.interp(np.clip(t + offset, 0, n - 1), t, x).astype(np.float32)
    if kind == "smear":  # a long, dense decaying tail blurs every onset
        length = int((0.05 + 0.35 * sev) * SR)
        tail = rng.standard_normal(length) * np.exp(-np.arange(length) / (length / 4))
        wet = np.convolve(x, tail)[:n]
        wet *= np.sqrt(np.mean(x**2) / max(np.mean(wet**2), 1e-12))  # same loudness: the cue is the blur
        return ((1 - sev) * x + sev * wet).astype(np.float32)
    raise ValueError(kind)


def failure(x: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """Replace or cut the audio as a broken generator would; returns (audio, seconds of music kept)."""
    n = x.size
    t = np.arange(n) / SR
    if kind == "silence":
        return np.zeros(n, np.float32), 0.0
    if kind == "noise_burst":
        gate = (rng.random(int(n / SR * 4) + 1) < 0.6).repeat(SR // 4)[:n]
        return (0.3 * rng.standard_normal(n) * gate).astype(np.float32), 0.0
    if kind == "clicks":
        y = np.zeros(n, np.float32)
        y[rng.integers(0, n, int(rng.uniform(20, 80)))] = rng.choice([-0.9, 0.9])
        return y + 0.1 * x * (rng.random() < 0.5), 0.0
    if kind == "held_tone":
        f0 = rng.uniform(150, 600)
        return (0.4 * np.sin(2 * np.pi * f0 * t) * np.minimum(1, t * 20)).astype(np.float32), 0.0
    if kind == "babble":  # speech-like: a glottal pulse train through moving formants, syllabic envelope
        f0 = rng.uniform(100, 220) * (1 + 0.1 * np.sin(2 * np.pi * 0.7 * t))
        pulses = np.sign(np.sin(2 * np.pi * np.cumsum(f0) / SR)) * 0.3
        formant = np.sin(2 * np.pi * np.cumsum(600 + 400 * np.sin(2 * np.pi * 3.3 * t)) / SR)
        syllables = 0.5 * (1 + np.sin(2 * np.pi * rng.uniform(3, 5) * t)) ** 2
        return (pulses * formant * syllables * 0.5).astype(np.float32), 0.0
    if kind == "early_stop":
        keep = rng.uniform(1.0, 4.0)
        y = x.copy()
        y[int(keep * SR):] = 0
        return y, keep
    raise ValueError(kind)


# ---------------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------------

def latent_scores(severities: dict, mismatches: tuple[bool, bool, bool], fail: str | None,
                  kept: float, seconds: float) -> tuple[float, float]:
    """The noiseless MI and TA of a clip (docs/democorpus.md gives the formulas)."""
    mi = 4.7 - sum(MI_WEIGHT[d] * s for d, s in severities.items())
    wrong_instrument, wrong_tempo, wrong_mood = mismatches
    ta = 4.6 - 1.4 * wrong_instrument - 0.9 * wrong_tempo - 1.1 * wrong_mood - 0.35 * max(0.0, 4.7 - max(mi, 1.0))
    if fail in FAILURE_MI:
        return FAILURE_MI[fail], FAILURE_TA[fail]
    if fail == "early_stop":
        mi = min(mi, 2.0 + 1.5 * kept / seconds)
        ta -= 1.0
    return float(np.clip(mi, 1, 5)), float(np.clip(ta, 1, 5))


def rate(latent: float, biases: np.ndarray, rng: np.random.Generator) -> float:
    """Mean of 5 raters (fixed bias + noise sd 0.4, each clipped to [1, 5]), rounded to the 0.2 grid."""
    ratings = np.clip(latent + biases + rng.normal(0, 0.4, biases.size), 1, 5)
    return float(np.clip(np.round(ratings.mean() / 0.2) * 0.2, 1, 5))


# ---------------------------------------------------------------------------------------------------
# One prompt, every system
# ---------------------------------------------------------------------------------------------------

def _other(rng, options, current):
    return str(rng.choice([o for o in options if o != current]))


def prompt_text(spec: dict, mode: str, key: str, rng: np.random.Generator) -> str:
    mood = MOODS[(mode, spec["tempo"])]
    phrase = INSTRUMENTS[spec["instrument"]][2]
    templates = [
        f"A {spec['tempo']}, {mood} {spec['style']} in {key}, played on {phrase}.",
        f"{mood.capitalize()} {spec['style'].lower()} for {phrase} at a {spec['tempo']} tempo (about {spec['bpm']:.0f} BPM), {mode} key.",
        f"{phrase.capitalize()} performing a {spec['tempo']} {spec['style'].lower()}; the mood is {mood}, in a {mode} key.",
    ]
    return templates[int(rng.integers(len(templates)))]


def render_prompt(task: tuple) -> list[tuple]:
    """Render every system's clip for one prompt; returns rows (wav_id, mi, ta, system, prompt_id, prompt)."""
    import soundfile as sf

    index, spec, systems, seed, seconds, out_dir, soundfont, biases = task
    rng = np.random.default_rng([seed, index])
    notes, mode, key = read_notes(spec["path"])
    text = prompt_text(spec, mode, key, rng)
    synth, sfid = _synth(soundfont)
    rows = []
    for s in systems:
        profile = SYSTEMS[s]
        wrong = tuple(bool(rng.random() < p) for p in profile.mismatch)
        instrument = _other(rng, INSTRUMENTS, spec["instrument"]) if wrong[0] else spec["instrument"]
        bpm = spec["bpm"] if not wrong[1] else rng.uniform(*TEMPI["fast" if spec["tempo"] != "fast" else "slow"])
        audio = render(synth, sfid, notes, INSTRUMENTS[instrument][0], bpm, seconds, invert=wrong[2])
        sev = {d: float(rng.uniform(*r)) for d, r in profile.degrade.items()}
        for d in DEGRADATIONS:  # fixed order: the same seed gives the same audio
            if d in sev:
                audio = degrade(audio, d, sev[d], rng)
        fail = next((f for f, p in profile.failures.items() if rng.random() < p), None)
        kept = seconds
        if fail:
            audio, kept = failure(audio, fail, rng)
        mi, ta = latent_scores(sev, wrong, fail, kept, seconds)
        wav_id = f"audiomos2025-track1-S{s + 1:03d}_P{index + 1:03d}"
        sf.write(Path(out_dir) / "wav" / f"{wav_id}.wav", np.clip(audio, -1, 1), SR, subtype="PCM_16")
        rows.append((wav_id, rate(mi, biases[0], rng), rate(ta, biases[1], rng), s, index, text))
    synth.delete()
    return rows


def make_demo_corpus(out_dir: str | Path, clips: int = 600, seed: int = 0, clip_seconds: float = 10.0,
                     workers: int = 2) -> Path:
    """Render a MusicEval-layout demo corpus; deterministic for a seed.

    Args:
        out_dir: folder to create (``wav/``, ``sets/``, ``prompt_info.txt``).
        clips: number of clips (each prompt is rendered by every system; the last prompt may be partial).
        seed: everything (prompts, defects, raters, splits) follows from it.
        clip_seconds: length of each clip.
        workers: parallel rendering processes.
    """
    if clips < len(SYSTEMS) or clip_seconds <= 0 or workers < 1:
        raise DeramosError(f"need clips >= {len(SYSTEMS)}, clip_seconds > 0 and workers >= 1")
    out = Path(out_dir)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    (out / "sets").mkdir(exist_ok=True)
    soundfont = find_soundfont()
    _synth(soundfont)[0].delete()  # fail early and clearly if fluidsynth is missing
    rng = np.random.default_rng(seed)
    n_prompts = -(-clips // len(SYSTEMS))
    specs = choose_prompts(n_prompts, rng)
    biases = rng.normal(0, 0.2, (2, 5))
    per_prompt = [list(range(len(SYSTEMS)))] * n_prompts
    per_prompt[-1] = list(range(clips - (n_prompts - 1) * len(SYSTEMS)))
    tasks = [(i, spec, per_prompt[i], seed, clip_seconds, str(out), soundfont, biases) for i, spec in enumerate(specs)]
    # Always render in fresh processes: the synthesiser's float arithmetic follows the calling thread's
    # floating-point state (e.g. flush-to-zero flags that other libraries set), which would otherwise make
    # the audio depend on what ran before in this process.
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        results = pool.map(render_prompt, tasks, chunksize=1)
    rows = [r for chunk in results for r in chunk]
    write_layout(out, rows, rng)
    return out


def write_layout(out: Path, rows: list[tuple], rng: np.random.Generator) -> None:
    prompts = {index: text for _, _, _, _, index, text in rows}
    with (out / "prompt_info.txt").open("w") as f:
        f.write("id\ttext\n")
        for index in sorted(prompts):
            f.write(f"P{index + 1:03d}\t{prompts[index]}\n")
    order = rng.permutation(len(rows))
    n_train, n_dev = int(round(0.7 * len(rows))), int(round(0.15 * len(rows)))
    bounds = {"train": order[:n_train], "dev": order[n_train : n_train + n_dev], "test": order[n_train + n_dev :]}
    for split, idx in bounds.items():
        lines = [f"{rows[i][0]}.wav,{rows[i][1]:.1f},{rows[i][2]:.1f}" for i in sorted(idx)]
        (out / "sets" / f"{split}_mos_list.txt").write_text("\n".join(lines) + "\n")


CORPUS_ENTRIES = ("wav", "sets", "prompt_info.txt", "demo_prompt_info.txt")


def clear_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty ``--out`` unless ``overwrite``; then remove only the corpus parts this tool writes.

    Raises:
        DeramosError: ``out`` is a file, or a non-empty folder without ``overwrite``.
    """
    if out.is_file():
        raise DeramosError(f"--out {out} is a file; name a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise DeramosError(f"--out {out} already exists and is not empty; pass --overwrite to replace the corpus "
                           "in it, or choose a new folder")
    for name in CORPUS_ENTRIES:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def summary(out: Path) -> str:
    from training.data import read_splits

    splits = read_splits(out, check_audio=False)
    clips = [c for s in splits.values() for c in s]
    lines = [", ".join(f"{s} {len(c)}" for s, c in splits.items())]
    for sid in sorted({c.system_id for c in clips}):
        own = [c for c in clips if c.system_id == sid]
        name = SYSTEMS[int(sid[1:]) - 1].name
        lines.append(f"{sid} {name:26} clips {len(own):3}  MI {np.mean([c.mi for c in own]):.2f}  "
                     f"TA {np.mean([c.ta for c in own]):.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    setup_logging()
    p = argparse.ArgumentParser(prog="python -m training.democorpus", description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--clips", type=int, default=600)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--overwrite", action="store_true", help="replace a corpus already in --out")
    args = p.parse_args(argv)

    def body() -> int:
        clear_out(Path(args.out), args.overwrite)
        with step("render demo corpus", log) as info:
            info["soundfont"] = find_soundfont()
            make_demo_corpus(args.out, args.clips, args.seed, args.seconds, args.workers)
            info["clips"] = args.clips
        print(summary(Path(args.out)))
        return 0

    return run_cli("training.democorpus", body)


if __name__ == "__main__":
    raise SystemExit(main())
