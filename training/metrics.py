"""The AudioMOS metrics live in the runtime (``deramos_rt.metrics``) so that scoring and comparing clips
need no torch; training uses them from there (every public name is re-exported here)."""

from deramos_rt.metrics import *  # noqa: F401,F403
from deramos_rt.metrics import mos_metrics, selection_score, system_id  # noqa: F401
