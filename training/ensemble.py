"""Ensembles: several member runs that share their frozen encoders, run as one model.

The encoders are nearly all of the cost (MuQ-large about 1,300 GFLOP per 30 s clip, the heads about 15), and
they are frozen, so members that share them exactly can share one encoder pass: an :class:`Ensemble` holds
the encoders once and every member's heads. Its three parts (:meth:`Ensemble.parts`) have the inputs of
``training/split.py``'s parts and a member axis at dim 1 of every output:

* audio: ``waveform (B, N)`` -> ``mi_probs (B, M, K)`` (scalar heads: ``mi_score (B, M)``), ``audio_x (B, M, T, d)``;
* text: ``input_ids, attention_mask (B, L)`` -> ``text_x (B, M, L, d)``;
* ta: ``audio_x (B, M, T, d)``, ``text_x (B, M, L, d)``, ``text_mask (B, L)`` -> ``ta_probs (B, M, K)`` / ``ta_score (B, M)``.

Member ``m``'s slice of every output is what member ``m``'s own model computes (tested to 1e-6). ONNX and
AOTInductor export and the parity gate all take these parts, through :func:`training.split.split_model`.

Members must share exactly (:func:`load_ensemble` refuses otherwise, naming the difference): the backbones
(names and options), the encoder weights (by sha256 of their tensors, wherever each member's weights were
read from), the audio protocol, the tokenizer (its file's sha256 and length limit), the head kind and bins,
and the TA width (``audio_x`` / ``text_x`` are stacked over members). Anything else in the heads may differ.
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from deramos_rt.errors import DeramosError
from training.split import (AUDIO_INPUTS, BATCH, BATCH_TOKENS, TEXT_INPUTS, audio_outputs, head_output_name,
                            ta_output)

MEMBER_TOKENS = {0: "batch", 2: "tokens"}  # text_x (B, M, L, d): the prompt length is dim 2


class Ensemble(nn.Module):
    """Shared frozen encoders + the heads of M members (build it with :func:`load_ensemble`).

    Args:
        members: the members' :class:`training.model.DeraMos` models; their encoders are replaced by the
            first member's (the caller has checked that they are equal).
        names: one name per member (unique).
    """

    def __init__(self, members: Sequence, names: Sequence[str]):
        super().__init__()
        if not members or len(members) != len(names) or len(set(names)) != len(names):
            raise DeramosError("an ensemble needs at least one member and one unique name per member")
        first = members[0]
        self.audio_encoder = first.audio_encoder
        self.text_encoder = first.text_encoder
        self.heads = EnsembleHeads(m.heads for m in members)
        self.names = list(names)
        for model in members:
            model.audio_encoder, model.text_encoder = self.audio_encoder, self.text_encoder
        self._members = list(members)  # not registered: their modules are the ones registered above

    @property
    def config(self):
        """The first member's model config (backbones, head kind, bins and TA width are every member's)."""
        return self._members[0].config

    @property
    def configs(self) -> list:
        return [m.config for m in self._members]

    @property
    def audio_protocol(self):
        return self._members[0].audio_protocol

    def __len__(self) -> int:
        return len(self._members)

    @torch.no_grad()
    def encode_audio(self, waveform: torch.Tensor) -> torch.Tensor:
        return self._members[0].encode_audio(waveform)

    @torch.no_grad()
    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._members[0].encode_text(input_ids, attention_mask)

    def member(self, index: int):
        """Member ``index`` as its own :class:`training.model.DeraMos` (sharing the ensemble's modules)."""
        return self._members[index]

    def parts(self) -> tuple[nn.Module, nn.Module, nn.Module]:
        """The three bundle parts over all members (eval mode)."""
        return EnsembleAudioPart(self).eval(), EnsembleTextPart(self).eval(), EnsembleTAPart(self).eval()

    def train(self, mode: bool = True) -> "Ensemble":
        super().train(mode)
        for encoder in (self.audio_encoder, self.text_encoder):
            if encoder is not None:
                encoder.eval()  # frozen encoders always run in eval mode
        return self


class EnsembleHeads(nn.ModuleList):
    """The members' heads; called like :class:`training.model.DeraMosHeads` on encoder outputs, they give the
    ensemble's outputs (evaluation: ``training.evaluate`` scores an ensemble through this).

    ``forward(audio_hidden, text_hidden, text_mask)`` -> ``mi`` / ``ta`` (the expected scores of the mean
    distributions; scalar heads: the mean scores), ``mi_probs`` / ``ta_probs`` (the mean distributions) and
    ``mi_std`` / ``ta_std`` (the members' spread, ddof 0), computed by :func:`deramos_rt.ensemble.combine`.
    """

    def forward(self, audio_hidden: torch.Tensor, text_hidden: torch.Tensor,
                text_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        from deramos_rt.ensemble import combine

        config = self[0].config
        bins = self[0].bin_centers.double().cpu().numpy() if config.head == "distribution" else None
        key = "probs" if bins is not None else None
        outputs = [heads(audio_hidden, text_hidden, text_mask) for heads in self]
        out = {}
        for dim in ("mi", "ta"):
            values = torch.stack([o[f"{dim}_{key}" if key else dim] for o in outputs], 1).detach().cpu().numpy()
            combined = combine(values, bins)
            out[dim] = torch.from_numpy(combined.score).float()
            if combined.probs is not None:
                out[f"{dim}_probs"] = torch.from_numpy(combined.probs).float()
            if combined.std is not None:
                out[f"{dim}_std"] = torch.from_numpy(combined.std).float()
        return {k: v.to(audio_hidden.device) for k, v in out.items()}


class EnsembleAudioPart(nn.Module):
    """The audio encoder once, then every member's MI branch and TA key/value projection."""

    def __init__(self, ensemble: Ensemble):
        super().__init__()
        self.encoder = ensemble.audio_encoder  # the name keeps export.quantize's "/encoder/" node rule
        self.members = ensemble.heads

    def output_names(self) -> tuple[str, str]:
        return head_output_name(self.members[0].config.head, "mi"), "audio_x"

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {name: BATCH for name in (*AUDIO_INPUTS, *self.output_names())}

    def forward(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.from_hidden(self.encoder(waveform))

    def from_hidden(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = [audio_outputs(heads, hidden) for heads in self.members]
        return torch.stack([o[0] for o in outputs], 1), torch.stack([o[1] for o in outputs], 1)


class EnsembleTextPart(nn.Module):
    """The text encoder once, then every member's TA query projection."""

    def __init__(self, ensemble: Ensemble):
        super().__init__()
        self.encoder = ensemble.text_encoder
        self.members = ensemble.heads

    def output_names(self) -> tuple[str]:
        return ("text_x",)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {**{name: BATCH_TOKENS for name in TEXT_INPUTS}, "text_x": MEMBER_TOKENS}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids, attention_mask)
        return torch.stack([heads.text_proj(hidden) for heads in self.members], 1)


class EnsembleTAPart(nn.Module):
    """Every member's TA branch on its own slice of ``audio_x`` and ``text_x``."""

    def __init__(self, ensemble: Ensemble):
        super().__init__()
        self.members = ensemble.heads

    def output_names(self) -> tuple[str]:
        return (head_output_name(self.members[0].config.head, "ta"),)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        (ta_name,) = self.output_names()
        return {"audio_x": BATCH, "text_x": MEMBER_TOKENS, "text_mask": BATCH_TOKENS, ta_name: BATCH}

    def forward(self, audio_x: torch.Tensor, text_x: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        return torch.stack([ta_output(heads, audio_x[:, i], text_x[:, i], text_mask)
                            for i, heads in enumerate(self.members)], 1)


def member_runs(paths: Sequence[str | Path]) -> list[Path]:
    """The member run directories named by ``paths``: each is a run directory or a folder of them.

    Raises:
        DeramosError: a path is neither (named), or a run is named twice.
    """
    runs: list[Path] = []
    for path in map(Path, paths):
        if (path / "config.json").is_file():
            runs.append(path)
            continue
        inner = sorted(p for p in path.iterdir() if (p / "config.json").is_file()) if path.is_dir() else []
        if not inner:
            raise DeramosError(f"--run {path} is neither a run directory (config.json) nor a folder of run "
                               "directories")
        runs += inner
    resolved = [r.resolve() for r in runs]
    twice = sorted({str(r) for r in resolved if resolved.count(r) > 1})
    if twice:
        raise DeramosError(f"run {twice[0]} is named twice; an ensemble's members must be different runs")
    return runs


def member_names(runs: Sequence[Path]) -> list[str]:
    """One unique, file-name-safe name per member: its run folder's name (``seed-1984``), numbered if repeated."""
    names = [re.sub(r"[^A-Za-z0-9._-]", "_", Path(r).resolve().name) or "member" for r in runs]
    return [f"{n}-{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]


def _config_facts(cfg) -> dict[str, object]:
    """What members' configs must share, by the name a refusal uses."""
    return {"audio backbone": [cfg.audio.name, cfg.audio.options], "text backbone": [cfg.text.name, cfg.text.options],
            "audio protocol (resampler)": cfg.resampler, "head kind": cfg.head, "bins": [cfg.num_bins, cfg.bin_min, cfg.bin_max],
            "TA width": cfg.ta_dim or cfg.text_dim, "tokenizer max_tokens": cfg.max_tokens}


def shared_facts(model, tokenizer) -> dict[str, object]:
    """Everything members must share: the config facts plus the encoders' weights, protocol and tokenizer."""
    from dataclasses import asdict

    from training.cache import weights_sha256

    return {**_config_facts(model.config),
            "audio encoder weights": weights_sha256(model.audio_encoder),
            "text encoder weights": weights_sha256(model.text_encoder),
            "audio protocol": asdict(model.audio_protocol),
            "tokenizer": tokenizer_sha256(tokenizer)}


def tokenizer_sha256(tokenizer) -> str:
    """sha256 of the tokenizer as the bundle writes it (``tokenizer.json``), with its length limit."""
    with tempfile.TemporaryDirectory() as tmp:
        data = tokenizer.save(Path(tmp) / "tokenizer.json").read_bytes()
    return hashlib.sha256(data + f"|{tokenizer.max_tokens}|{tokenizer.pad_id}".encode()).hexdigest()


def check_same(facts: Sequence[dict[str, object]], names: Sequence[str]) -> None:
    """Refuse members whose facts differ, naming the first fact that does and two members that disagree."""
    for key, first in facts[0].items():
        for other, name in zip(facts[1:], names[1:]):
            if other[key] != first:
                raise DeramosError(f"members do not share their frozen encoders: {key} differs ({names[0]}: "
                                   f"{_short(first)}; {name}: {_short(other[key])}); an ensemble's members must "
                                   "use the same backbones, encoder weights, audio protocol and tokenizer")


def _short(value: object) -> str:
    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value):
        return f"sha256 {value[:12]}"
    return json.dumps(value, sort_keys=True)


def load_any(path: str | Path, device: str = "cpu"):
    """``(model, run_config)`` of a run directory, or of a folder of member runs as an :class:`Ensemble`
    (then the first member's run config)."""
    from training.checkpoint import CONFIG_FILE, load_run
    from training.config import RunConfig

    path = Path(path)
    if (path / CONFIG_FILE).is_file() or not path.is_dir():
        return load_run(path, device=device)
    runs = member_runs([path])
    ensemble, _ = load_ensemble(runs, device=device)
    return ensemble, RunConfig.from_json(runs[0] / CONFIG_FILE)


def load_ensemble(runs: Sequence[str | Path], load: Callable | None = None,
                  device: str = "cpu") -> tuple[Ensemble, object]:
    """Load member runs into one :class:`Ensemble`, refusing members that do not share their encoders.

    Configs are compared before any weights are read; members are then loaded one at a time (at most two
    copies of the encoders in memory) and each one's encoders, protocol and tokenizer are compared with the
    first member's.

    Args:
        runs: member run directories (see :func:`member_runs`).
        load: ``load(run_dir) -> (model, run_config, tokenizer)`` (default: ``training.checkpoint.load_run``
            and ``training.model.build_tokenizer``).
        device: where the default ``load`` puts the models.

    Returns:
        ``(ensemble, tokenizer)``; ``ensemble.names`` are :func:`member_names`.

    Raises:
        DeramosError: a run cannot be read, or members differ in something they must share.
    """
    from training.config import RunConfig

    runs, names = [Path(r) for r in runs], member_names(runs)
    check_same([_config_facts(RunConfig.from_json(r / "config.json").model) for r in runs], names)
    load = load or (lambda run: _load_run(run, device))
    members, facts, tokenizer = [], [], None
    for run in runs:
        model, _, member_tokenizer = load(run)
        facts.append(shared_facts(model, member_tokenizer))
        check_same([facts[0], facts[-1]], [names[0], names[len(facts) - 1]])
        if members:  # equal to the first member's: drop this copy now
            model.audio_encoder, model.text_encoder = members[0].audio_encoder, members[0].text_encoder
        members.append(model)
        tokenizer = tokenizer or member_tokenizer
    return Ensemble(members, names).eval(), tokenizer


def _load_run(run: Path, device: str):
    from training.checkpoint import load_run
    from training.model import build_tokenizer

    model, run_config = load_run(run, device=device)
    return model, run_config, build_tokenizer(model)


def member_entry(ensemble: Ensemble, index: int, run: Path) -> dict[str, object]:
    """A bundle manifest's ``model.members`` entry: name, source run, config and heads hashes, config."""
    from dataclasses import asdict

    from training.cache import weights_sha256

    config = Path(run) / "config.json"
    return {"name": ensemble.names[index], "run": str(Path(run).resolve()),
            "config_sha256": hashlib.sha256(config.read_bytes()).hexdigest(),
            "heads_sha256": weights_sha256(ensemble.heads[index]),
            "config": asdict(ensemble.configs[index])}
