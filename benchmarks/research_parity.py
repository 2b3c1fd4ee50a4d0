"""Max |delta| between imported research checkpoints and the authors' own head code (stored reference).

``python -m benchmarks.research_parity``: batch 1 and a padded batch of 3, both variants.
"""

from __future__ import annotations

import json

import numpy as np
import torch



def main() -> int:
    from tests.training.test_research import LENGTHS, RECORD, REF, _inputs, research_state  # noqa: E402
    from training.research import import_state_dict

    audio, text, mask = _inputs()
    report = {}
    for variant in ("dera-mos", "astar-ntu"):
        model = import_state_dict(research_state(RECORD[variant]), variant=variant)
        with torch.no_grad():
            padded = model.heads(audio, text, mask)
            single = [model.heads(audio[i:i + 1], text[i:i + 1, :n], mask[i:i + 1, :n]) for i, n in enumerate(LENGTHS)]
        for key in ("mi", "ta"):
            ref = REF[f"{variant}_{key}_b1"]
            report[f"{variant} {key.upper()} batch1"] = float(np.abs(torch.cat([s[key] for s in single]).numpy() - ref).max())
            report[f"{variant} {key.upper()} padded"] = float(np.abs(padded[key].numpy() - ref).max())
            report[f"{variant} {key.upper()} probs padded"] = float(np.abs(padded[f"{key}_probs"].numpy() - REF[f"{variant}_{key}_probs_b1"]).max())
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
