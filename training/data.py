"""The MusicEval layout -> validated clip records.

Layout (AudioMOS 2025 track 1)::

    wav/audiomos2025-track1-S002_P044.wav     system S002, prompt P044
    sets/{train,dev,test}_mos_list.txt         no header; "wavID,MI,TA" (wavID with or without .wav)
    prompt_info.txt                            TSV with header "id<TAB>text", id = P###
    demo_prompt_info.txt                       optional TSV, id = full wav name (demo systems
                                               S001 S006 S013 S017 S018 S033, whose clips have no P###)

Every problem is found before training starts and reported with its file and line; audio decoding
itself goes through :mod:`deramos_rt.audio`, shared with the runtime.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from deramos_rt.errors import DeramosError

SPLITS = ("train", "dev", "test")
_SYSTEM = re.compile(r"(S\d{3})")
_PROMPT = re.compile(r"_(P\d+)$")
MAX_REPORTED = 12


@dataclass(frozen=True)
class Clip:
    """One listed clip.

    Attributes:
        wav_id: id without ``.wav``.
        path: the audio file.
        system_id: ``S###``.
        prompt: the text prompt.
        mi, ta: mean opinion scores in [1, 5].
        source: ``file:line`` it was listed at (for error messages).
    """

    wav_id: str
    path: Path
    system_id: str
    prompt: str
    mi: float
    ta: float
    source: str


def strip_wav(name: str) -> str:
    return name[:-4] if name.lower().endswith(".wav") else name


def read_prompt_table(path: Path, required: bool) -> dict[str, str]:
    """Read an ``id<TAB>text`` table with a header line; keys have any ``.wav`` removed."""
    if not path.is_file():
        if required:
            raise DeramosError(f"prompt table not found: {path}")
        return {}
    table: dict[str, str] = {}
    with path.open(encoding="utf-8", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for line_no, row in enumerate(rows, start=1):
            if line_no == 1 and row and row[0].strip().lower() == "id":
                continue
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2 or not row[0].strip():
                raise DeramosError(f"{path}:{line_no}: expected 'id<TAB>text', got {' '.join(row)!r}")
            table[strip_wav(row[0].strip())] = "\t".join(row[1:]).strip()
    return table


@dataclass
class Corpus:
    """A MusicEval-layout folder with its prompt tables loaded."""

    root: Path
    prompts: dict[str, str]
    demo_prompts: dict[str, str]

    @classmethod
    def open(cls, root: str | Path) -> "Corpus":
        root = Path(root)
        if not root.is_dir():
            raise DeramosError(f"data folder not found: {root}")
        return cls(root, read_prompt_table(root / "prompt_info.txt", required=True),
                   read_prompt_table(root / "demo_prompt_info.txt", required=False))

    def list_path(self, split: str) -> Path:
        return self.root / "sets" / f"{split}_mos_list.txt"

    def prompt_for(self, wav_id: str) -> str | None:
        # Demo systems are keyed by the full wav name; everything else by its P### id.
        if wav_id in self.demo_prompts:
            return self.demo_prompts[wav_id]
        match = _PROMPT.search(wav_id)
        return self.prompts.get(match.group(1)) if match else None

    def read_split(self, split: str, check_audio: bool = True) -> list[Clip]:
        """Parse and validate one split; raise one error listing every problem found.

        Raises:
            DeramosError: missing list, malformed line, MOS outside [1, 5], missing or unreadable wav,
                no prompt for a clip, or an empty split.
        """
        path = self.list_path(split)
        if not path.is_file():
            raise DeramosError(f"split list not found: {path} (expected sets/{split}_mos_list.txt)")
        clips, problems = [], []
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                clips.append(self._parse_line(line, f"{path}:{line_no}", check_audio))
            except DeramosError as exc:
                problems.append(str(exc))
        if problems:
            shown = "\n  ".join(problems[:MAX_REPORTED])
            more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
            raise DeramosError(f"{len(problems)} problem(s) in split {split!r}:\n  {shown}{more}")
        if not clips:
            raise DeramosError(f"split {split!r} is empty: {path}")
        return clips

    def _parse_line(self, line: str, source: str, check_audio: bool) -> Clip:
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 3 or not fields[0]:
            raise DeramosError(f"{source}: expected 'wavID,MI,TA', got {line.strip()!r}")
        wav_id = strip_wav(fields[0])
        try:
            mi, ta = float(fields[1]), float(fields[2])
        except ValueError:
            raise DeramosError(f"{source}: MI and TA must be numbers, got {fields[1]!r}, {fields[2]!r}") from None
        for name, value in (("MI", mi), ("TA", ta)):
            if not 1.0 <= value <= 5.0:
                raise DeramosError(f"{source}: {name} = {value} is outside [1, 5]")
        system = _SYSTEM.search(wav_id)
        if system is None:
            raise DeramosError(f"{source}: no system id S### in wav id {wav_id!r}")
        prompt = self.prompt_for(wav_id)
        if prompt is None:
            raise DeramosError(f"{source}: no prompt for {wav_id!r} in prompt_info.txt or demo_prompt_info.txt")
        wav = self.root / "wav" / f"{wav_id}.wav"
        if check_audio:
            _check_audio(wav, source)
        return Clip(wav_id, wav, system.group(1), prompt, mi, ta, source)


def _check_audio(path: Path, source: str) -> None:
    import soundfile as sf

    if not path.is_file():
        raise DeramosError(f"{source}: audio file missing: {path}")
    try:
        info = sf.info(str(path))
    except Exception as exc:
        raise DeramosError(f"{source}: unreadable audio file {path}: {exc}") from None
    if info.frames == 0:
        raise DeramosError(f"{source}: audio file has no samples: {path}")


def read_splits(root: str | Path, splits: tuple[str, ...] = SPLITS, check_audio: bool = True) -> dict[str, list[Clip]]:
    """Read several splits of one corpus (all validated before anything else runs)."""
    corpus = Corpus.open(root)
    return {split: corpus.read_split(split, check_audio) for split in splits}
