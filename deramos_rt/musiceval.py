"""The MusicEval corpus layout -> validated clip records (torch-free: the runtime reads it too).

Layout (AudioMOS 2025 track 1)::

    wav/audiomos2025-track1-S002_P044.wav     system S002, prompt P044
    sets/{train,dev,test}_mos_list.txt         no header; "wavID,MI,TA" (wavID with or without .wav)
    prompt_info.txt                            TSV with header "id<TAB>text", id = P###
    demo_prompt_info.txt                       optional TSV with header, id = full wav name

Prompt rule (the authors' research code): a clip of one of the demo systems S001, S006, S013, S017, S018,
S033 takes its prompt from ``demo_prompt_info.txt`` (keyed by its wav id); every other clip takes it from
``prompt_info.txt`` (keyed by the ``P###`` at the end of its wav id). Two cases the authors' code does not
handle are settled here: a demo-system clip missing from ``demo_prompt_info.txt`` (or with no such file)
falls back to its ``P###`` prompt (their code would stop with a missing-key error), and a clip of a
non-demo system that ``demo_prompt_info.txt`` also lists is an error naming it, because the two tables
then claim the same clip. An id listed twice in one table is an error naming the file and both lines.

Every problem is reported with its file and line, all problems of a split in one error.

Example::

    from deramos_rt.musiceval import read_split
    clips = read_split("/data/MusicEval", "test")     # list[MusicEvalClip]
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from deramos_rt.errors import DeramosError
from deramos_rt.scorefile import allow_long_csv_fields
from deramos_rt.metrics import system_id

SPLITS = ("train", "dev", "test")
DEMO_SYSTEMS = frozenset({"S001", "S006", "S013", "S017", "S018", "S033"})
PROMPT_FILE = "prompt_info.txt"
DEMO_PROMPT_FILE = "demo_prompt_info.txt"
_PROMPT_ID = re.compile(r"_(P\d+)$")
MAX_REPORTED = 12


@dataclass(frozen=True)
class MusicEvalClip:
    """One listed clip.

    Attributes:
        wav_id: id without ``.wav``.
        path: the audio file (``wav/<wav_id>.wav``).
        system_id: ``S###``.
        prompt_id: the key its prompt was found under (``P###``, or the wav id for demo prompts).
        prompt: the text prompt.
        mi, ta: mean opinion scores in [1, 5].
        source: ``file:line`` it was listed at (for error messages).
    """

    wav_id: str
    path: Path
    system_id: str
    prompt_id: str
    prompt: str
    mi: float
    ta: float
    source: str


def strip_wav(name: str) -> str:
    """``"x.wav"`` -> ``"x"``; other names unchanged."""
    return name[:-4] if name.lower().endswith(".wav") else name


def read_prompt_table(path: Path, required: bool) -> dict[str, str]:
    """Read an ``id<TAB>text`` table with an optional ``id`` header line; keys have any ``.wav`` removed.

    Raises:
        DeramosError: a required table is missing, a line is malformed, or an id is listed twice.
    """
    path = Path(path)
    if not path.is_file():
        if required:
            raise DeramosError(f"prompt table not found: {path}")
        return {}
    table: dict[str, str] = {}
    first_line: dict[str, int] = {}
    allow_long_csv_fields()
    with path.open(encoding="utf-8", newline="") as f:
        for line_no, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
            if line_no == 1 and row and row[0].strip().lower() == "id":
                continue
            if not row or not "".join(row).strip():
                continue
            if len(row) < 2 or not row[0].strip():
                raise DeramosError(f"{path}:{line_no}: expected 'id<TAB>text', got {' '.join(row)!r}")
            key = strip_wav(row[0].strip())
            if key in table:
                raise DeramosError(f"{path}:{line_no}: prompt id {key!r} is listed twice (first at line "
                                   f"{first_line[key]}); which prompt applies is ambiguous")
            table[key], first_line[key] = "\t".join(row[1:]).strip(), line_no
    return table


@dataclass
class Corpus:
    """A MusicEval-layout folder with its prompt tables loaded."""

    root: Path
    prompts: dict[str, str]
    demo_prompts: dict[str, str]

    @classmethod
    def open(cls, root: str | Path) -> "Corpus":
        """Load the prompt tables of a MusicEval-layout folder.

        Raises:
            DeramosError: the folder or ``prompt_info.txt`` is missing, or a prompt table is malformed.
        """
        root = Path(root)
        if not root.is_dir():
            raise DeramosError(f"data folder not found: {root}")
        return cls(root, read_prompt_table(root / PROMPT_FILE, required=True),
                   read_prompt_table(root / DEMO_PROMPT_FILE, required=False))

    def list_path(self, split: str) -> Path:
        """``sets/<split>_mos_list.txt``."""
        return self.root / "sets" / f"{split}_mos_list.txt"

    def prompt_for(self, wav_id: str, system: str) -> tuple[str, str]:
        """``(prompt id, prompt text)`` of a clip by the authors' rule (see the module docstring).

        Raises:
            DeramosError: no prompt, or a non-demo clip that the demo table also lists.
        """
        if system in DEMO_SYSTEMS and wav_id in self.demo_prompts:
            return wav_id, self.demo_prompts[wav_id]
        if wav_id in self.demo_prompts:
            raise DeramosError(f"{wav_id!r} is listed in {DEMO_PROMPT_FILE}, but its system {system} is not a "
                               f"demo system ({', '.join(sorted(DEMO_SYSTEMS))}), whose prompts come from "
                               f"{PROMPT_FILE}: its prompt is ambiguous; remove it from {DEMO_PROMPT_FILE}")
        match = _PROMPT_ID.search(wav_id)
        if match and match.group(1) in self.prompts:
            return match.group(1), self.prompts[match.group(1)]
        where = f"{DEMO_PROMPT_FILE} or {PROMPT_FILE}" if system in DEMO_SYSTEMS else PROMPT_FILE
        raise DeramosError(f"no prompt for {wav_id!r} in {where}")

    def read_split(self, split: str, check_audio: bool = True) -> list[MusicEvalClip]:
        """Parse and validate one split; raise one error listing every problem found.

        Args:
            split: ``train``, ``dev`` or ``test``.
            check_audio: also check that every wav exists and decodes (header only).

        Raises:
            DeramosError: missing list, malformed line, MOS outside [1, 5], missing or unreadable wav,
                no prompt for a clip, an ambiguous prompt, or an empty split. A multi-problem message
                lists one problem per line.
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
            raise DeramosError(problem_list(f"{len(problems)} problem(s) in split {split!r}", problems))
        if not clips:
            raise DeramosError(f"split {split!r} is empty: {path}")
        return clips

    def _parse_line(self, line: str, source: str, check_audio: bool) -> MusicEvalClip:
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
        try:
            system = system_id(wav_id)
            prompt_id, prompt = self.prompt_for(wav_id, system)
        except DeramosError as exc:
            raise DeramosError(f"{source}: {exc}") from None
        wav = self.root / "wav" / f"{wav_id}.wav"
        if check_audio:
            check_audio_file(wav, source)
        return MusicEvalClip(wav_id, wav, system, prompt_id, prompt, mi, ta, source)


def problem_list(title: str, problems: list[str]) -> str:
    """``title:`` then one indented problem per line (at most MAX_REPORTED), ending with a newline.

    The final newline keeps whatever a caller appends (e.g. a CLI's timing) off the last problem's line.
    """
    shown = "".join(f"\n  {p}" for p in problems[:MAX_REPORTED])
    more = f"\n  ... and {len(problems) - MAX_REPORTED} more" if len(problems) > MAX_REPORTED else ""
    return f"{title}:{shown}{more}\n"


def check_audio_file(path: Path, source: str) -> None:
    """Check that a wav exists and its header decodes with at least one frame."""
    import soundfile as sf

    if not path.is_file():
        raise DeramosError(f"{source}: audio file missing: {path}")
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises several types for a bad header
        raise DeramosError(f"{source}: unreadable audio file {path}: {exc}") from None
    if info.frames == 0:
        raise DeramosError(f"{source}: audio file has no samples: {path}")


def read_split(root: str | Path, split: str, check_audio: bool = True) -> list[MusicEvalClip]:
    """Read and validate one split of a MusicEval-layout folder (see :meth:`Corpus.read_split`)."""
    if split not in SPLITS:
        raise DeramosError(f"unknown split {split!r}; choose one of: {', '.join(SPLITS)}")
    return Corpus.open(root).read_split(split, check_audio)


def read_splits(root: str | Path, splits: tuple[str, ...] = SPLITS, check_audio: bool = True) -> dict[str, list[MusicEvalClip]]:
    """Read several splits of one corpus (all validated before anything else runs)."""
    corpus = Corpus.open(root)
    return {split: corpus.read_split(split, check_audio) for split in splits}
