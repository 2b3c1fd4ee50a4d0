"""The Scorer: MI and TA for (audio, prompt) items, streamed through any backend.

Work is shaped for throughput and for scores that depend on nothing but the clip and its prompt:

* clips are decoded and resampled in worker threads (``deramos_rt.pipeline``) with the model's audio
  protocol, the same ``deramos_rt.audio`` code training uses;
* batches are formed by clip *window* (one window per clip in ``truncate`` mode, consecutive windows of
  the clip length in ``windows`` mode), whatever file they came from;
* each distinct prompt goes through the text graph once (bounded LRU by text); the TA graph pairs the
  cached ``text_x`` with every window's ``audio_x``, padded to the batch's longest prompt with a mask;
* a long clip in ``windows`` mode scores the mean of its windows' distributions weighted by how much of
  each window is real audio (scalar heads: the weighted mean score). Never a random crop.

A clip that cannot be scored (missing, corrupt, empty, NaN samples, too many channels) gets ``error``
set and the job goes on; an empty prompt gives MI and a TA error.
"""

from __future__ import annotations

import collections
import logging
import os
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

from deramos_rt.audio import LONG_AUDIO
from deramos_rt.errors import DeramosError
from deramos_rt.pipeline import EMPTY_PROMPT, Prepared, make_request, prepared_stream
from deramos_rt.text import check_text_graph, check_token_ids

log = logging.getLogger(__name__)

TEXT_CACHE_SIZE = 2048


@dataclass
class ClipScore:
    """One clip's result.

    Attributes:
        id, path, system, prompt: as given (path is None for in-memory audio).
        mi, ta: expected scores in [1, 5]; None when not scored.
        mi_probs, ta_probs: the 20-bin distributions (distribution heads), else None.
        error: None when both scores were given, else why not (one line).
        prompt_truncated: the prompt was longer than the model's token limit and was cut.
        windows: how many windows of the clip length were scored.
    """

    id: str
    path: str | None
    system: str
    prompt: str
    mi: float | None = None
    ta: float | None = None
    mi_probs: list[float] | None = None
    ta_probs: list[float] | None = None
    error: str | None = None
    prompt_truncated: bool = False
    windows: int = 0


class _ClipState:
    """Accumulates a clip's window outputs until every window is in."""

    def __init__(self, prepared: Prepared):
        self.request = prepared.request
        self.error = prepared.error
        self.weights = prepared.weights
        self.left = 0 if prepared.windows is None else len(prepared.windows)
        self.mi = None
        self.ta = None


class Scorer:
    """Scores clips with a DeRA-MOS model.

    Args:
        model: a bundle folder, a training run directory, a built-in model's name (``"default"``), or None
            for the built-in default model (its bundle is built into the user's cache folder on first use;
            ``$DERAMOS_DEFAULT_BUNDLE`` names another bundle for it).
        backend: ``auto``, ``onnxruntime``, ``tensorrt``, ``aoti`` or ``torch`` (run directories).
        device: ``cpu``, ``cuda``, ``cuda:N`` (None: the backend's choice).
        batch_size: windows per inference call (None: 8 on CPU, 32 on GPU).
        decode_workers: threads that decode and resample clips (None: up to 4; 0: on the calling thread).
        long_audio: ``truncate`` (the paper's protocol: the first clip-length seconds) or ``windows``.
        precision: ``fp32``, ``int8``, ``fp16`` or ``bf16`` where the backend has it (None: its default).
        threads: CPU threads for the backend (None: its default).
        trust_bundle: let the tensorrt / aoti backends (and ``auto``) load this bundle's native code although
            it is not in the local trust store (``deramos_rt.trust``; ONNX graphs never need it).

    Example::

        scorer = Scorer()
        clip = scorer.score_clip("song.wav", "calm piano")
        print(clip.mi, clip.ta)
    """

    def __init__(self, model=None, backend: str = "auto", device: str | None = None,
                 batch_size: int | None = None, decode_workers: int | None = None, long_audio: str = "truncate",
                 precision: str | None = None, threads: int | None = None, trust_bundle: bool = False):
        from deramos_rt.backends import open_backend
        from deramos_rt.source import resolve_source

        if long_audio not in LONG_AUDIO:
            raise DeramosError(f"unknown long_audio {long_audio!r}; choose one of: {', '.join(LONG_AUDIO)}")
        if batch_size is not None and int(batch_size) < 1:
            raise DeramosError(f"batch_size must be at least 1, got {batch_size}")
        if decode_workers is not None and int(decode_workers) < 0:
            raise DeramosError(f"decode_workers must be 0 or more, got {decode_workers}")
        self.source = resolve_source(model, backend)
        self.backend = open_backend(backend, self.source, device, precision, threads, trust_bundle)
        self.tokenizer = self.source.tokenizer()
        self.protocol = self.source.protocol
        # Before any work: the text graph takes every id the tokenizer can produce (docs/security.md).
        check_text_graph(self.backend.run_text, self.tokenizer.vocab_size, self.source.root)
        on_gpu = self.backend.info.device.startswith(("cuda", "tensorrt"))
        self.batch_size = int(batch_size) if batch_size else (32 if on_gpu else 8)
        cap = getattr(self.backend, "max_batch", None)  # e.g. a TensorRT engine's optimisation profile
        if cap and self.batch_size > cap:
            log.info("batch size %d capped at %d: the most the %s backend takes per call", self.batch_size, cap,
                     self.backend.info.name)
            self.batch_size = cap
        self.decode_workers = decode_workers
        self.long_audio = long_audio
        self._text: collections.OrderedDict[str, tuple[np.ndarray, bool]] = collections.OrderedDict()
        self.counts = collections.Counter()

    @property
    def provenance(self) -> dict[str, str]:
        """What produced the scores: backend, precision, model identity, deramos_rt version."""
        from deramos_rt import __version__

        info = self.backend.info
        return {"backend": info.name, "precision": info.precision, "bundle": self.source.identity,
                "deramos_rt": __version__}

    def close(self) -> None:
        self.backend.close()

    def __enter__(self) -> "Scorer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -------------------------------------------------------------------------------------------- API

    def score(self, items: Iterable) -> list[ClipScore]:
        """Score items, one result per item in input order.

        Args:
            items: ``(path, prompt)``, ``(array, sample_rate, prompt)`` or dicts with ``path`` (or
                ``array`` + ``sample_rate``), ``prompt`` and optional ``id`` / ``system``.
        """
        return list(self.iter_scores(items))

    def score_clip(self, audio, *args) -> ClipScore:
        """Score one clip: ``score_clip(path, prompt)`` or ``score_clip(array, sample_rate, prompt)``.

        Without a prompt only MI is scored (``ta`` None, ``error`` says why). A clip that cannot be
        scored is returned with ``error`` set, as in :meth:`score`.

        Raises:
            DeramosError: the arguments have neither shape.
        """
        [result] = self.score([_clip_item(audio, args)])
        return result

    def iter_scores(self, items: Iterable) -> Iterator[ClipScore]:
        """Like :meth:`score`, but streamed: memory stays flat in the number of items."""
        _refuse_single_clip(items)
        requests = (make_request(item, i) for i, item in enumerate(items))
        stream = prepared_stream(requests, self.protocol, self.long_audio, self.decode_workers,
                                 prefetch=max(4 * self.batch_size, 16))
        yield from self._score_prepared(stream)

    def score_manifest(self, manifest, out, resume: bool = True, probs: bool = False,
                       overwrite: bool = False) -> dict:
        """Stream a manifest (CSV / JSONL) to a score file; see :func:`deramos_rt.jobs.score_manifest`."""
        from deramos_rt.jobs import score_manifest

        return score_manifest(self, manifest, out, resume=resume, probs=probs, overwrite=overwrite)

    def score_prepared(self, prepared: Iterable) -> Iterator[ClipScore]:
        """Score already-decoded clips (:class:`deramos_rt.pipeline.Prepared`), in order (Ray actors)."""
        return self._score_prepared(prepared)

    # ---------------------------------------------------------------------------------------- batching

    def _score_prepared(self, stream: Iterable[Prepared]) -> Iterator[ClipScore]:
        pending: collections.deque[_ClipState] = collections.deque()
        batch: list[tuple[_ClipState, int, np.ndarray]] = []
        for prepared in stream:
            state = _ClipState(prepared)
            pending.append(state)
            for i in range(state.left):
                batch.append((state, i, prepared.windows[i]))
                if len(batch) == self.batch_size:
                    self._run_batch(batch)
                    batch = []
                    yield from self._ready(pending)
            yield from self._ready(pending)
        if batch:
            self._run_batch(batch)
        yield from self._ready(pending)

    def _ready(self, pending) -> Iterator[ClipScore]:
        while pending and pending[0].left == 0:
            yield self._finish(pending.popleft())

    def _run_batch(self, batch: list[tuple[_ClipState, int, np.ndarray]]) -> None:
        waves = np.stack([w for _, _, w in batch])
        mi, audio_x = self.backend.run_audio(waves)
        rows = [r for r, (state, _, _) in enumerate(batch) if state.request.prompt.strip()]
        ta = self._run_ta(audio_x[np.asarray(rows)], [batch[r][0].request.prompt for r in rows]) if rows else None
        ta_of = dict(zip(rows, ta)) if rows else {}
        for r, (state, window, _) in enumerate(batch):
            weight = float(state.weights[window])
            state.mi = _accumulate(state.mi, mi[r], weight)
            if r in ta_of:
                state.ta = _accumulate(state.ta, ta_of[r], weight)
            state.left -= 1
        self.counts["windows"] += len(batch)

    def _run_ta(self, audio_x: np.ndarray, prompts: list[str]) -> np.ndarray:
        """TA for each row of ``audio_x`` with its prompt (cached ``text_x`` padded to the longest + mask)."""
        self._encode_prompts(prompts)
        from deramos_rt.text import pad_sequences

        text_x, mask = pad_sequences([self._text[p][0] for p in prompts])
        return self.backend.run_ta(audio_x, text_x, mask)

    def _encode_prompts(self, prompts: list[str]) -> None:
        """Run the text graph once for each prompt not in the cache (all new ones in one call)."""
        new = list(dict.fromkeys(p for p in prompts if p not in self._text))
        for p in prompts:
            if p in self._text:
                self._text.move_to_end(p)
        if not new:
            return
        tokens = self.tokenizer(new)
        check_token_ids(tokens.input_ids, self.tokenizer.vocab_size)
        text_x = self.backend.run_text(tokens.input_ids, tokens.attention_mask)
        for i, p in enumerate(new):
            real = int(tokens.attention_mask[i].sum())
            self._text[p] = (np.array(text_x[i, :real], dtype=np.float32), tokens.truncated[i])
            self.counts["prompts_encoded"] += 1
        while len(self._text) > TEXT_CACHE_SIZE:
            self._text.popitem(last=False)

    def _finish(self, state: _ClipState) -> ClipScore:
        req = state.request
        out = ClipScore(req.id, req.path, req.system, req.prompt, windows=0 if state.weights is None else len(state.weights))
        if state.error is not None:
            out.error = state.error
            self.counts["failed"] += 1
            return out
        total = float(np.sum(state.weights))
        out.mi, out.mi_probs = self._expected(state.mi / total)
        if state.ta is not None:
            out.ta, out.ta_probs = self._expected(state.ta / total)
            entry = self._text.get(req.prompt)
            out.prompt_truncated = bool(entry and entry[1])
            self.counts["prompts_truncated"] += out.prompt_truncated
        else:
            out.error = EMPTY_PROMPT
            self.counts["failed"] += 1
        self.counts["scored" if out.error is None else "partial"] += 1
        return out

    def _expected(self, value: np.ndarray) -> tuple[float, list[float] | None]:
        if self.source.head == "distribution":
            return float(value @ self.source.bins), [float(v) for v in value]
        return float(value), None


def _clip_item(audio, args: tuple) -> dict:
    """The item of :meth:`Scorer.score_clip`'s arguments."""
    if isinstance(audio, (str, os.PathLike)):
        if len(args) > 1:
            raise DeramosError(f"score_clip(path, prompt) takes 2 arguments, got {len(args) + 1}")
        return {"path": os.fspath(audio), "prompt": args[0] if args else ""}
    if not args or len(args) > 2 or isinstance(args[0], bool) or not isinstance(args[0], (int, np.integer)):
        raise DeramosError("score_clip(array, sample_rate, prompt): give the array's sample rate (an integer, "
                           "in Hz) after it, then the prompt")
    return {"array": audio, "sample_rate": int(args[0]), "prompt": args[1] if len(args) == 2 else ""}


def _refuse_single_clip(items) -> None:
    """A bare path or one (path, prompt) tuple passed as ``items`` would be iterated piece by piece."""
    one = (str, bytes, os.PathLike, np.ndarray)
    if isinstance(items, one + (dict,)) or (isinstance(items, tuple) and items and isinstance(items[0], one)):
        raise DeramosError("Scorer.score takes a list of items such as [(path, prompt)]; for one clip use "
                           "Scorer.score_clip(path, prompt) or Scorer.score_clip(array, sample_rate, prompt)")


def _accumulate(total, value, weight: float):
    contribution = np.asarray(value, dtype=np.float64) * weight
    return contribution if total is None else total + contribution


def system_scores(results: Iterable[ClipScore]) -> dict[str, dict]:
    """Per-system means, counts and failures.

    Returns:
        ``{system: {"clips", "failed", "mi_n", "mi_mean", "ta_n", "ta_mean"}}`` (means None when nothing
        was scored), systems in first-seen order.
    """
    from deramos_rt.scorefile import SystemTally

    tally = SystemTally()
    for r in results:
        tally.add(r.system, r.mi, r.ta, r.error)
    return tally.summary()
