"""Measured speed for ``auto``: which CPU backend of a bundle is fastest on this CPU.

``export.calibrate`` times every CPU candidate of a bundle at export (onnxruntime fp32, onnxruntime int8,
AOTInductor) and stores the rates in the manifest under ``calibration.cpus[<cpu key>]``. The CPU key is the
CPU's model name and the SIMD features that decide int8 and fp32 speed, so a bundle copied to another
machine is not ordered by rates measured elsewhere. :func:`measured_order` reorders ``auto``'s CPU
candidates by those rates; where the bundle carries none for this CPU, the fixed order stays.

Pure functions on plain data (no inference library is imported): a manifest comes from a stranger, so
every value read here is checked and a malformed entry only means "not measured".
"""

from __future__ import annotations

import math
import platform
from pathlib import Path
from typing import Any, Sequence

# The SIMD features that decide how fast fp32 and int8 kernels run (int8 without VNNI is 1.2x fp32,
# with VNNI about 3-4x).
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8", "amx_bf16")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
# A candidate later in the fixed order moves ahead only when it measured this much faster: rates taken
# seconds apart on a shared machine differ by a few per cent without any real difference.
MARGIN = 0.05


def cpu_features(cpuinfo: str | None = None) -> dict[str, Any]:
    """The CPU model and the SIMD features in :data:`ISA_FLAGS` (from ``/proc/cpuinfo`` on Linux).

    Args:
        cpuinfo: the text of ``/proc/cpuinfo`` (None: read it; absent on other systems).
    """
    flags, model = set(), platform.processor() or platform.machine()
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags" and not flags:
            flags = set(value.split())
        elif key.strip() == "model name" and value.strip():
            model = value.strip()
    return {"model": model, **{f: f in flags for f in ISA_FLAGS}}


def cpu_key(features: dict[str, Any] | None = None) -> str:
    """``"<model name>|<flag>+<flag>..."``: the key calibrations are stored under (``|none`` without any)."""
    features = cpu_features() if features is None else features
    present = [f for f in ISA_FLAGS if features.get(f)]
    return f"{features.get('model', '?')}|{'+'.join(present) or 'none'}"


def key_flags(key: str) -> set[str]:
    """The SIMD flags named in a CPU key."""
    _, _, flags = key.rpartition("|")
    return set(flags.split("+")) - {"none", ""}


def candidate_name(candidate: Sequence[Any]) -> str:
    """The calibration name of an ``auto`` candidate (backend, device, precision, why): ``onnxruntime-int8``,
    ``onnxruntime-fp32``, ``aoti``."""
    backend, _, precision = candidate[0], candidate[1], candidate[2]
    return f"{backend}-{precision}" if backend == "onnxruntime" else str(backend)


def _is_cpu(candidate: Sequence[Any]) -> bool:
    return str(candidate[1] or "cpu") == "cpu"


def measured_rates(manifest: dict[str, Any], key: str) -> tuple[dict[str, float], dict[str, Any] | None]:
    """The valid rates (clips/s, finite and positive) stored for CPU ``key``, and that entry (None if absent)."""
    calibration = manifest.get("calibration") if isinstance(manifest, dict) else None
    cpus = calibration.get("cpus") if isinstance(calibration, dict) else None
    entry = cpus.get(key) if isinstance(cpus, dict) else None
    if not isinstance(entry, dict) or not isinstance(entry.get("rates"), dict):
        return {}, None
    rates = {}
    for name, rate in entry["rates"].items():
        if isinstance(name, str) and isinstance(rate, (int, float)) and not isinstance(rate, bool) \
                and math.isfinite(rate) and rate > 0:
            rates[name] = float(rate)
    return rates, entry


def _int8_needs_vnni(manifest: dict[str, Any]) -> bool:
    """True when the int8 graphs were tuned with full-range weights, accurate only with VNNI kernels."""
    variants = manifest.get("variants") if isinstance(manifest, dict) else None
    int8 = variants.get("int8") if isinstance(variants, dict) else None
    choice = int8.get("quantisation") if isinstance(int8, dict) else None
    return isinstance(choice, dict) and choice.get("needs_vnni") is True


def order_with_margin(items: Sequence[Any], rate, margin: float = MARGIN) -> list:
    """``items`` with a rate fastest first, those without one after them in their given order.

    An item earlier in the given order wins against a faster one measured within ``margin`` of it: the
    given order is the default, and a difference inside the noise of a shared machine does not overturn it.

    Args:
        items: in the default order.
        rate: item -> its measured rate (higher is faster) or None.
        margin: the relative difference that counts as faster.
    """
    left = [item for item in items if rate(item) is not None]
    ordered = []
    while left:
        best = max(rate(item) for item in left)
        pick = next(item for item in left if rate(item) >= best * (1 - margin))
        ordered.append(pick)
        left.remove(pick)
    return ordered + [item for item in items if rate(item) is None]


def measured_order(manifest: dict[str, Any], key: str, candidates: Sequence[Sequence[Any]]) -> tuple[list, str]:
    """``auto``'s candidates reordered by the rates the bundle measured on this CPU.

    GPU candidates keep their places at the front (calibration times CPU backends only). CPU candidates
    with a rate for ``key`` go first, fastest first; those without one follow in the fixed order. Int8
    graphs tuned for VNNI (``quantisation.needs_vnni``) are passed over on a CPU without VNNI: their
    full-range weights can saturate the other int8 kernels.

    Args:
        manifest: the bundle's manifest.
        key: this CPU's :func:`cpu_key`.
        candidates: (backend, device, precision, why) tuples in the fixed order.

    Returns:
        (candidates in the order to try, one line saying why).
    """
    candidates = list(candidates)
    notes = []
    if _int8_needs_vnni(manifest) and not key_flags(key) & set(VNNI_FLAGS):
        dropped = [c for c in candidates if _is_cpu(c) and candidate_name(c) == "onnxruntime-int8"]
        if dropped:
            candidates = [c for c in candidates if c not in dropped]
            notes.append("int8 passed over: its graphs were tuned for VNNI, which this CPU lacks")
    gpu = [c for c in candidates if not _is_cpu(c)]
    cpu = [c for c in candidates if _is_cpu(c)]
    rates, entry = measured_rates(manifest, key)
    usable = {candidate_name(c): rates[candidate_name(c)] for c in cpu if candidate_name(c) in rates}
    if not usable:
        stored = manifest.get("calibration", {}).get("cpus", {}) if isinstance(manifest.get("calibration"), dict) else {}
        known = ", ".join(sorted(str(k) for k in stored)) if isinstance(stored, dict) and stored else "none"
        notes.append(f"no measured rates for this CPU ({key}; the bundle has: {known}): fixed order")
        return gpu + cpu, "; ".join(notes)
    ordered = order_with_margin(cpu, lambda c: usable.get(candidate_name(c)))
    when = f" at {entry.get('measured')}" if isinstance(entry.get("measured"), str) else ""
    figures = ", ".join(f"{name} {rate:.4g} clips/s" for name, rate in sorted(usable.items(), key=lambda kv: -kv[1]))
    notes.append(f"measured on this CPU{when}: {figures} -> {candidate_name(ordered[0])} first")
    return gpu + ordered, "; ".join(notes)
