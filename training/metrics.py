"""The AudioMOS metrics live in the runtime (``deramos_rt.metrics``) so that scoring and comparing clips
need no torch; training imports them from there."""

from deramos_rt.metrics import mos_metrics, selection_score, system_id  # noqa: F401
