"""How every command reports: a checklist of START / DONE lines on stderr, one verdict line at the end.

Library modules only log to ``logging.getLogger(__name__)``; a CLI calls :func:`setup_logging` once and
wraps its work in :func:`run_cli`, which turns a :class:`DeramosError` into one line and exit code 2.
"""

from __future__ import annotations

import contextlib
import logging
import platform
import sys
import time
from typing import Callable, Iterator

from deramos_rt.errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, EXIT_PARTIAL, DeramosError

log = logging.getLogger("deramos_rt")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="[%(name)s] %(message)s", force=True)


@contextlib.contextmanager
def step(name: str, logger: logging.Logger = log) -> Iterator[dict]:
    """Log ``START name`` then ``DONE name (1.2 s, <details>)``; fill the yielded dict with details."""
    details: dict = {}
    logger.info("START %s", name)
    start = time.perf_counter()
    yield details
    extra = ", ".join(f"{k}={v}" for k, v in details.items())
    logger.info("DONE  %s (%.1f s%s)", name, time.perf_counter() - start, f", {extra}" if extra else "")


def versions() -> str:
    parts = [f"python {platform.python_version()}"]
    for name in ("numpy", "torch", "transformers", "onnxruntime"):
        module = sys.modules.get(name)
        if module is not None:
            parts.append(f"{name} {getattr(module, '__version__', '?')}")
    return ", ".join(parts)


def run_cli(prog: str, body: Callable[[], int]) -> int:
    """Run a CLI body: echo the command, report OK / FAILED with wall time; user errors exit 2."""
    log.info("%s %s", prog, " ".join(sys.argv[1:]))
    start = time.perf_counter()
    try:
        code = body()
    except DeramosError as exc:
        message, elapsed = str(exc).rstrip("\n"), time.perf_counter() - start
        if "\n" in message:  # a list of problems: the timing goes on the FAILED line, not after the last one
            log.error("FAILED %s (%.1f s):\n%s", prog, elapsed, message)
        else:
            log.error("FAILED %s: %s (%.1f s)", prog, message, elapsed)
        return EXIT_ERROR
    except KeyboardInterrupt:
        log.error("INTERRUPTED %s after %.1f s; finished work was kept", prog, time.perf_counter() - start)
        return EXIT_INTERRUPTED
    verdict = {EXIT_OK: "OK", EXIT_PARTIAL: "PARTIAL"}.get(code, "FAILED")  # PARTIAL: written, some items failed
    log.info("%s %s (%.1f s)", verdict, prog, time.perf_counter() - start)
    return code
