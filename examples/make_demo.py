"""Rebuild ``examples/demo`` (the README's example set) from a freshly rendered demo corpus.

    python -m training.democorpus --out /tmp/examples_src --clips 36 --seed 4242 --seconds 10
    python examples/make_demo.py /tmp/examples_src examples/demo

Corpus seed 4242 is used by no training run of the built-in model, so these clips are new to it. The clips
are re-encoded in the formats users bring (FLAC 16 kHz mono, OGG 44.1 kHz stereo, MP3 48 kHz stereo), so
the example also exercises decoding, downmixing and resampling.
"""

import csv
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

FORMATS = (("flac", 16000, 1, {"format": "FLAC", "subtype": "PCM_16"}),
           ("ogg", 44100, 2, {"format": "OGG", "subtype": "VORBIS"}),
           ("mp3", 48000, 2, {"format": "MP3", "subtype": "MPEG_LAYER_III"}))


def main(src: str, out: str) -> None:
    src, out = Path(src), Path(out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    prompts = dict(line.split("\t", 1) for line in (src / "prompt_info.txt").read_text().splitlines()[1:])
    labels = sorted(line for split in src.glob("sets/*_mos_list.txt") for line in split.read_text().split())
    rows = []
    for i, line in enumerate(labels):
        wav_id, mi, ta = line.split(",")
        stem = wav_id.removesuffix(".wav")
        ext, rate, channels, kwargs = FORMATS[i % len(FORMATS)]
        audio, sr = sf.read(src / "wav" / wav_id, dtype="float32")
        audio = soxr.resample(audio, sr, rate)
        if channels == 2:  # a slightly different right channel, as real stereo renders have
            audio = np.stack([audio, 0.9 * audio], axis=1)
        name = f"clips/{stem}.{ext}"
        sf.write(out / name, audio, rate, **kwargs)
        system, prompt_id = stem.split("-")[-1].split("_")
        rows.append({"id": stem, "path": name, "system": system, "prompt": prompts[prompt_id].strip(),
                     "mi_label": mi, "ta_label": ta})
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["id", "path", "system", "prompt"])
        writer.writeheader()
        writer.writerows({k: r[k] for k in ("id", "path", "system", "prompt")} for r in rows)
    with open(out / "labels.txt", "w") as f:  # MusicEval mos-list format: wavID,MI,TA (synthetic labels)
        f.writelines(f"{r['id']},{r['mi_label']},{r['ta_label']}\n" for r in rows)


if __name__ == "__main__":
    main(*sys.argv[1:3])
