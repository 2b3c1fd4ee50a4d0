"""The Scorer: MI and TA for (audio, prompt) items, streamed through any backend.

Work is shaped for throughput and for scores that depend on nothing but the clip and its prompt:

* clips are decoded and resampled in worker threads (``deramos_rt.pipeline``) with the model's audio
  protocol, the same ``deramos_rt.audio`` code training uses; where the backend's input stage resamples
  on its device (``deramos_rt.backends.base``), the workers only decode, and tensors already on the device
  are scored where they are;
* each job splits the cores: decode workers with single-threaded numpy BLAS, the backend on the rest
  (``pipeline.plan_threads``), its settings restored after the job;
* on a device backend (``overlaps_batches``) the audio graph of batch k+1 runs in a thread while the TA
  graph and the bookkeeping of batch k run here; scores and their order are those of the serial loop;
* batches are formed by clip *window* (one window per clip in ``truncate`` mode, consecutive windows of
  the clip length in ``windows`` mode), whatever file they came from;
* each distinct prompt goes through the text graph once (bounded LRU by text); the TA graph pairs the
  cached ``text_x`` with every window's ``audio_x``, padded to the batch's longest prompt with a mask;
* a long clip in ``windows`` mode scores the mean of its windows' distributions weighted by how much of
  each window is real audio (scalar heads: the weighted mean score). Never a random crop. A long file
  arrives as pieces of a few windows (decoded as a stream); a window's audio is held only until its batch
  has run.

A clip that cannot be scored (missing, corrupt, empty, NaN samples, too many channels) gets ``error``
set and the job goes on; an empty prompt gives MI and a TA error.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from deramos_rt.audio import LONG_AUDIO
from deramos_rt.backends.base import input_stage, job_threads, overlaps_batches
from deramos_rt.ensemble import add_member_axis, combine
from deramos_rt.errors import DeramosError
from deramos_rt.pipeline import EMPTY_PROMPT, Prepared, batch_items, make_request, plan_threads, prepared_stream
from deramos_rt.text import check_text_graph, check_token_ids

log = logging.getLogger(__name__)

TEXT_CACHE_SIZE = 2048


@dataclass
class ClipScore:
    """One clip's result.

    Attributes:
        id, path, system, prompt: as given (path is None for in-memory audio).
        mi, ta: expected scores in [1, 5]; None when not scored.
        mi_probs, ta_probs: the 20-bin distributions (distribution heads), else None; for an ensemble the
            mean of its members' distributions (``mi`` / ``ta`` are their expected scores).
        mi_std, ta_std: an ensemble's spread: the standard deviation (ddof 0) of its members' scores for the
            clip; None for a single model.
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
    mi_std: float | None = None
    ta_std: float | None = None
    error: str | None = None
    prompt_truncated: bool = False
    windows: int = 0


class _ClipState:
    """Accumulates a clip's window outputs until its last piece is in and every window is scored.

    A long file in ``windows`` mode arrives as several pieces (``pipeline.prepare_pieces``), in order; the
    weights of all its windows are kept (a float per window), their audio only while their batch runs.
    """

    def __init__(self, request):
        self.request = request
        self.error = None
        self._weights: list[np.ndarray] | None = []
        self.left = 0
        self.complete = False
        self.mi = None
        self.ta = None

    def add(self, piece: Prepared) -> None:
        """Count in the windows of one more piece (an error piece fails the whole clip)."""
        if piece.error is not None:
            self.error, self._weights = piece.error, None
        elif self._weights is not None:
            self._weights.append(piece.weights)
        self.left += piece.count
        self.complete = piece.last

    @property
    def weights(self) -> np.ndarray | None:
        """Every window's share of real audio, in order; None for a clip that failed."""
        return None if self._weights is None else np.concatenate(self._weights)

    @property
    def done(self) -> bool:
        """The last piece is in and every window is scored."""
        return self.complete and self.left == 0


class Scorer:
    """Scores clips with a DeRA-MOS model.

    Args:
        model: a bundle folder, a training run directory, a built-in model's name (``"default"``), or None
            for the built-in default model (its bundle is built into the user's cache folder on first use;
            ``$DERAMOS_DEFAULT_BUNDLE`` names another bundle for it).
        backend: ``auto``, ``onnxruntime``, ``tensorrt``, ``aoti`` or ``torch`` (run directories).
        device: ``cpu``, ``cuda``, ``cuda:N`` (None: the backend's choice).
        batch_size: windows per inference call (None: 8 on CPU, 32 on GPU).
        decode_workers: threads that decode (and on the CPU resample) clips; None: every core but one on a
            GPU, a quarter of the cores on the CPU (at least 1); 0: on the calling thread.
        long_audio: ``truncate`` (the paper's protocol: the first clip-length seconds) or ``windows``.
        precision: ``fp32``, ``int8``, ``fp16`` or ``bf16`` where the backend has it (None: its default).
        threads: CPU threads for the backend (None: the cores the decode workers leave).
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
        # Sessions that fix their thread count when they open (ONNX Runtime) get the CPU plan's share;
        # threads that can change per job (torch) follow each job's plan.
        opened = plan_threads(decode_workers, threads, on_gpu=False).backend_threads
        self.backend = open_backend(backend, self.source, device, precision, opened, trust_bundle)
        try:
            self.tokenizer = self.source.tokenizer()
            self.protocol = self.source.protocol
            # Before any work: the text graph takes every id the tokenizer can produce (docs/security.md).
            check_text_graph(self.backend.run_text, self.tokenizer.vocab_size, self.source.root)
        except BaseException:
            self.backend.close()  # a refused model leaves no sessions or device memory behind
            raise
        on_gpu = self.backend.info.device.startswith(("cuda", "tensorrt"))
        self.batch_size = int(batch_size) if batch_size else (32 if on_gpu else 8)
        cap = getattr(self.backend, "max_batch", None)  # e.g. a TensorRT engine's optimisation profile
        if cap and self.batch_size > cap:
            log.info("batch size %d capped at %d: the most the %s backend takes per call", self.batch_size, cap,
                     self.backend.info.name)
            self.batch_size = cap
        self.threads = plan_threads(decode_workers, threads, on_gpu)
        self.decode_workers = self.threads.decode_workers
        self.long_audio = long_audio
        self._ensemble = bool(getattr(self.source, "members", None))  # outputs carry a member axis
        self.stage = input_stage(self.backend, self.protocol)
        self._overlap = overlaps_batches(self.backend)
        log.info("audio input: %s; %d decode workers, %d backend threads%s", self.stage.description,
                 self.threads.decode_workers, self.threads.backend_threads,
                 "; audio graph of the next batch overlaps this one's TA" if self._overlap else "")
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

    def score(self, items, sample_rate: int | None = None, prompts=None) -> list[ClipScore]:
        """Score items, one result per item in input order.

        Args:
            items: ``(path, prompt)``, ``(array, sample_rate, prompt)`` or dicts with ``path`` (or
                ``array`` + ``sample_rate``), ``prompt`` and optional ``id`` / ``system``; an array may be a
                torch tensor, scored on its device without a copy to the host where the backend runs
                there. Or one (B, N) batch of mono signals (numpy or a tensor) with ``sample_rate`` and
                ``prompts`` (one per row, or one for all).
            sample_rate: the rate of a (B, N) batch.
            prompts: the prompts of a (B, N) batch.
        """
        return list(self.iter_scores(items, sample_rate, prompts))

    def score_clip(self, audio, *args) -> ClipScore:
        """Score one clip: ``score_clip(path, prompt)`` or ``score_clip(array, sample_rate, prompt)``.

        Without a prompt only MI is scored (``ta`` None, ``error`` says why). A clip that cannot be
        scored is returned with ``error`` set, as in :meth:`score`.

        Raises:
            DeramosError: the arguments have neither shape.
        """
        [result] = self.score([_clip_item(audio, args)])
        return result

    def iter_scores(self, items, sample_rate: int | None = None, prompts=None) -> Iterator[ClipScore]:
        """Like :meth:`score`, but streamed: memory stays flat in the number of items."""
        if hasattr(items, "shape"):
            items = batch_items(items, sample_rate, prompts)
        else:
            _refuse_single_clip(items)
        requests = (make_request(item, i) for i, item in enumerate(items))
        stream = prepared_stream(requests, self.protocol, self.long_audio, self.threads.decode_workers,
                                 prefetch=max(4 * self.batch_size, 16), native=self.stage.native)
        with job_threads(self.backend, self.threads.backend_threads):
            try:
                yield from self._score_prepared(stream)
            finally:
                stream.close()  # the decode workers stop (and give BLAS its threads back) now, not at GC

    def score_manifest(self, manifest, out, resume: bool = True, probs: bool = False,
                       overwrite: bool = False) -> dict:
        """Stream a manifest (CSV / JSONL) to a score file; see :func:`deramos_rt.jobs.score_manifest`."""
        from deramos_rt.jobs import score_manifest

        return score_manifest(self, manifest, out, resume=resume, probs=probs, overwrite=overwrite)

    def score_prepared(self, prepared: Iterable) -> Iterator[ClipScore]:
        """Score already-decoded clips (:class:`deramos_rt.pipeline.Prepared`), in order (Ray actors)."""
        plan = plan_threads(0, self.threads.backend_threads, on_gpu=False)
        with job_threads(self.backend, plan.backend_threads):
            yield from self._score_prepared(prepared)

    # ---------------------------------------------------------------------------------------- batching

    def _score_prepared(self, stream: Iterable[Prepared]) -> Iterator[ClipScore]:
        """Windows in batches through the backend; results as soon as their clip is complete, in order."""
        pending: collections.deque[_ClipState] = collections.deque()
        inflight: collections.deque = collections.deque()
        rows: list[tuple[_ClipState, Prepared, int]] = []  # (clip, piece, window in the piece)
        keep = 1 if self._overlap else 0  # batches whose audio graph may run while this thread goes on
        with self._audio_runner() as run:
            for prepared in stream:
                if prepared.first == 0:  # a clip's first piece (later pieces continue the last clip)
                    pending.append(_ClipState(prepared.request))
                state = pending[-1]
                state.add(prepared)
                for window in range(prepared.count):
                    rows.append((state, prepared, window))
                    if len(rows) == self.batch_size:
                        inflight.append(self._launch(run, rows))
                        rows = []
                        yield from self._settle(inflight, pending, keep)
                yield from self._ready(pending)
            if rows:
                inflight.append(self._launch(run, rows))
            yield from self._settle(inflight, pending, 0)

    @contextlib.contextmanager
    def _audio_runner(self):
        """Runs the audio graph: in one worker thread when batches overlap, else right here."""
        if not self._overlap:
            def run_here(staged):
                outputs = self.backend.run_audio(staged)
                return lambda: outputs

            yield run_here
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="deramos-audio") as pool:
            yield lambda staged: pool.submit(self.backend.run_audio, staged).result

    def _launch(self, run: Callable, rows: list[tuple[_ClipState, Prepared, int]]) -> tuple[list, Callable[[], Any]]:
        """Stage a batch (its copy to the device overlaps the batch before it) and start its audio graph."""
        staged = self.stage.stage([(piece, window) for _, piece, window in rows])
        return rows, run(staged)

    def _settle(self, inflight, pending, keep: int) -> Iterator[ClipScore]:
        """Finish batches until ``keep`` are in flight, yielding every clip that completes."""
        while len(inflight) > keep:
            rows, outputs = inflight.popleft()
            self._finish_batch(rows, outputs())
            yield from self._ready(pending)

    def _ready(self, pending) -> Iterator[ClipScore]:
        while pending and pending[0].done:
            yield self._finish(pending.popleft())

    def _finish_batch(self, rows: list[tuple[_ClipState, Prepared, int]], outputs: tuple[np.ndarray, Any]) -> None:
        """TA for the batch's rows and each window's outputs added to its clip."""
        mi, audio_x = outputs
        prompts = [state.request.prompt for state, _, _ in rows]
        scored = [bool(p.strip()) for p in prompts]
        ta = None
        if any(scored):
            # audio_x may live on a device: the TA graph takes every row; a row without a prompt borrows
            # another row's (its TA is dropped; rows never affect each other's scores).
            stand_in = prompts[scored.index(True)]
            ta = self._run_ta(audio_x, [p if s else stand_in for p, s in zip(prompts, scored)])
        for r, (state, piece, window) in enumerate(rows):
            weight = float(piece.weights[window])
            state.mi = _accumulate(state.mi, mi[r], weight)
            if scored[r]:
                state.ta = _accumulate(state.ta, ta[r], weight)
            state.left -= 1
        self.counts["windows"] += len(rows)

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
            # The token axis is second to last: (L, d) per prompt, (M, L, d) for an ensemble.
            self._text[p] = (np.array(text_x[i, ..., :real, :], dtype=np.float32), tokens.truncated[i])
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
        out.mi, out.mi_probs, out.mi_std = self._expected(state.mi / total)
        if state.ta is not None:
            out.ta, out.ta_probs, out.ta_std = self._expected(state.ta / total)
            entry = self._text.get(req.prompt)
            out.prompt_truncated = bool(entry and entry[1])
            self.counts["prompts_truncated"] += out.prompt_truncated
        else:
            out.error = EMPTY_PROMPT
            self.counts["failed"] += 1
        self.counts["scored" if out.error is None else "partial"] += 1
        return out

    def _expected(self, value: np.ndarray) -> tuple[float, list[float] | None, float | None]:
        """(score, distribution, members' spread) of a clip's (window-weighted) head output.

        One model is an ensemble of one (no spread); an ensemble's score is the expected score of its
        members' mean distribution (scalar heads: the mean score).
        """
        bins = self.source.bins if self.source.head == "distribution" else None
        members = value if self._ensemble else add_member_axis(value, bins)
        combined = combine(members, bins)
        probs = None if combined.probs is None else [float(v) for v in combined.probs]
        return float(combined.score), probs, None if combined.std is None else float(combined.std)


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
