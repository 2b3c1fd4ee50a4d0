"""The MusicEval layout -> validated clip records, for training and evaluation.

The reading itself lives in the torch-free runtime module :mod:`deramos_rt.musiceval` (the scoring CLI
reads the same layout); this module re-exports it under the names training code uses. Audio decoding
goes through :mod:`deramos_rt.audio`, shared with the runtime.
"""

from __future__ import annotations

from deramos_rt.musiceval import (  # noqa: F401
    DEMO_SYSTEMS,
    SPLITS,
    Corpus,
    MusicEvalClip,
    read_prompt_table,
    read_split,
    read_splits,
    strip_wav,
)

Clip = MusicEvalClip
