"""deramos_rt: fast, trustworthy MI / TA scoring of text-to-music clips (DeRA-MOS).

The runtime package. It imports neither ``training`` nor ``torch`` at import time; :class:`Scorer` and
its results load on first use, so ``import deramos_rt`` stays cheap.

Example::

    from deramos_rt import Scorer
    results = Scorer().score([("clip.wav", "a calm piano piece")])
"""

from deramos_rt.errors import DeramosError

__version__ = "0.1.0"

__all__ = ["ClipScore", "DeramosError", "Scorer", "system_scores", "__version__"]

_LAZY = {"Scorer": "deramos_rt.scorer", "ClipScore": "deramos_rt.scorer", "system_scores": "deramos_rt.scorer"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'deramos_rt' has no attribute {name!r}")
