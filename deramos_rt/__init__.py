"""deramos_rt: fast, trustworthy MI / TA scoring of text-to-music clips (DeRA-MOS).

The runtime package. It imports neither ``training`` nor ``torch`` at import time.
"""

from deramos_rt.errors import DeramosError

__version__ = "0.1.0"

__all__ = ["DeramosError", "__version__"]
