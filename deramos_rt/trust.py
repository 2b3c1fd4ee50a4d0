"""Which bundles may run native code here: the local trust store.

ONNX graphs are data (ONNX Runtime runs no code from them), but a bundle's TensorRT plans and
AOTInductor packages are machine code: deserialising an engine or loading a ``.pt2`` package (a shared
library) runs whatever its author compiled, and the compatibility fields the runtime reads first were
written by that author too. So those backends load only from a bundle the user trusts:

* built on this machine by ``python -m export.build_engine`` (which records it here), or
* trusted once with ``deramos-rt trust BUNDLE``, or
* opted in for one run with ``--trust-bundle`` / ``Scorer(..., trust_bundle=True)``.

The store is a JSON file, ``$DERAMOS_CACHE/trusted-bundles.json`` (default
``~/.cache/deramos_rt/trusted-bundles.json``), keyed by the manifest's sha256, which covers every file's
hash: a bundle whose any file changes is a different, untrusted bundle. It is rewritten atomically (a
temporary file renamed over it, under a lock), so concurrent builds never lose each other's entries and a
crash never leaves it half-written.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from deramos_rt.errors import DeramosError
from deramos_rt.models import cache_root

log = logging.getLogger(__name__)

STORE_NAME = "trusted-bundles.json"
STORE_FORMAT = "deramos-trusted-bundles"
# The store holds one line per trusted bundle; far larger is not ours.
MAX_STORE_BYTES = 16 << 20
HOW_TO = ("opt in with --trust-bundle (Python: Scorer(..., trust_bundle=True)) or trust it once with: "
          "deramos-rt trust {root}")


def store_path() -> Path:
    """Where the trust store lives (see the module docstring)."""
    return cache_root() / STORE_NAME


def _read_store(path: Path) -> dict[str, dict[str, Any]]:
    """``{manifest sha256: {path, when, how}}``; a missing store is empty, an unreadable one an error."""
    try:
        if path.stat().st_size > MAX_STORE_BYTES:
            raise DeramosError(f"trust store {path} is larger than {MAX_STORE_BYTES >> 20} MB: not a trust store "
                               "(move it away to start a new one)")
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise DeramosError(f"cannot read the trust store {path}: {exc} (fix or remove the file)") from exc
    if not isinstance(data, dict) or data.get("format") != STORE_FORMAT or not isinstance(data.get("bundles"), dict):
        raise DeramosError(f"{path} is not a deramos_rt trust store (fix or remove the file)")
    return data["bundles"]


def _write_store(path: Path, bundles: dict[str, dict[str, Any]]) -> None:
    """Replace the store atomically: a temporary file in the same folder, flushed, then renamed."""
    text = json.dumps({"format": STORE_FORMAT, "bundles": bundles}, indent=1, sort_keys=True) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{STORE_NAME}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for a read-modify-write of the store (two builds at once keep both entries)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{STORE_NAME}.lock"), "a") as lock:
        try:
            import fcntl
        except ImportError:  # not POSIX: the rename still keeps the file whole
            yield
            return
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def is_trusted(bundle) -> bool:
    """Whether this verified bundle's manifest sha256 is in the trust store.

    Raises:
        DeramosError: the store exists but cannot be read.
    """
    return bool(getattr(bundle, "verified", False)) and bundle.sha256 in _read_store(store_path())


def trust(bundle, how: str = "trusted with deramos-rt trust") -> dict[str, Any]:
    """Record ``bundle`` (loaded with ``verify=True``) as trusted to run native code on this machine.

    Args:
        bundle: a verified :class:`deramos_rt.bundle.Bundle`.
        how: why it is trusted (``built here by export.build_engine``, ...), kept in the store.

    Returns:
        The store entry: ``{path, when, how}``.

    Raises:
        DeramosError: the bundle was loaded without verifying its files, or the store cannot be written.
    """
    if not getattr(bundle, "verified", False):
        raise DeramosError(f"bundle {bundle.root} was loaded without checking its files' hashes; only a verified "
                           "bundle can be trusted")
    return _record(bundle.sha256, bundle.root, how)


def _record(sha256: str, root: Path, how: str) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    entry = {"path": str(root), "when": now, "how": how}
    path = store_path()
    try:
        with _locked(path):
            bundles = _read_store(path)
            bundles[sha256] = entry
            _write_store(path, bundles)
    except OSError as exc:
        raise DeramosError(f"cannot write the trust store {path}: {exc.strerror or exc}") from exc
    log.info("trusted bundle %s (manifest sha256 %s) in %s", root, sha256, path)
    return entry


def untrust(sha256: str) -> bool:
    """Remove a manifest sha256 from the store; True when it was there."""
    path = store_path()
    try:
        with _locked(path):
            bundles = _read_store(path)
            found = bundles.pop(sha256, None) is not None
            if found:
                _write_store(path, bundles)
    except OSError as exc:
        raise DeramosError(f"cannot write the trust store {path}: {exc.strerror or exc}") from exc
    return found


def native_refusal(bundle, what: str, trust_bundle: bool = False) -> str | None:
    """Why ``bundle``'s native code (``what``: "TensorRT engines", ...) may not load here; None when it may."""
    if trust_bundle or is_trusted(bundle):
        return None
    return (f"bundle {bundle.root} is not trusted to run native code: its {what} are compiled code that runs with "
            f"your permissions, and the bundle was neither built on this machine nor trusted; "
            + HOW_TO.format(root=bundle.root))


def require_native_trust(bundle, what: str, trust_bundle: bool = False) -> None:
    """Refuse, in one line saying how to opt in, to load ``bundle``'s native code unless it is trusted.

    Args:
        bundle: the loaded bundle.
        what: what would load, for the message ("TensorRT engines", "AOTInductor packages").
        trust_bundle: the user opted in for this run (``--trust-bundle``).

    Raises:
        DeramosError: the bundle is neither trusted in the store nor opted in.
    """
    reason = native_refusal(bundle, what, trust_bundle)
    if reason:
        raise DeramosError(reason)


def record_built(bundle_dir: str | Path) -> None:
    """Trust a bundle that ``export.build_engine`` has just written here (its manifest's sha256, not
    re-hashed: this process wrote every file); a store that cannot be written costs a warning, never the
    build."""
    from deramos_rt.bundle import MANIFEST

    root = Path(bundle_dir).resolve()
    try:
        _record(hashlib.sha256((root / MANIFEST).read_bytes()).hexdigest(), root, "built here by export.build_engine")
    except (DeramosError, OSError) as exc:
        log.warning("the bundle was built but not recorded as trusted (%s); its native code needs "
                    "--trust-bundle or deramos-rt trust %s", exc, bundle_dir)


# --------------------------------------------------------------------------------- deramos-rt trust


def native_summary(manifest: dict[str, Any]) -> str:
    parts = [f"TensorRT engines ({', '.join(e.get('key', '?') for e in manifest['tensorrt'])})"
             if manifest.get("tensorrt") else "",
             f"AOTInductor packages ({manifest['aoti'].get('device', '?')})" if manifest.get("aoti") else ""]
    parts = [p for p in parts if p]
    return " and ".join(parts) if parts else "no native code (its ONNX graphs never need trust)"
