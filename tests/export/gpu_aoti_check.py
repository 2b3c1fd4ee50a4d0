"""GPU check of CUDA AOTInductor packages (run by hand on a CUDA machine; not collected by pytest).

``python tests/export/gpu_aoti_check.py OUT_DIR``: builds a tiny bundle with ``--aoti-device cuda``, prints
the manifest's aoti section and the parity report, then scores clips with the aoti backend on CUDA and
with the torch backend on the CPU and prints the largest difference. Exit 0 when the packages passed.
"""

import json
import logging
import sys
import time
from pathlib import Path

import numpy as np


def main(out: Path) -> int:
    import soundfile as sf
    import torch

    from deramos_rt.bundle import load_bundle
    from deramos_rt.scorer import Scorer
    from export.testing import tiny_bundle

    logging.basicConfig(level=logging.INFO)
    print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name())
    start = time.perf_counter()
    bundle = tiny_bundle(out / "tiny", aoti=True, aoti_device="cuda", slim=False, parity_files=2, parity_random=6)
    print("build seconds", round(time.perf_counter() - start, 1))
    manifest = load_bundle(bundle).manifest
    print("aoti section", json.dumps(manifest["aoti"]))
    parity = json.loads((bundle / "parity.json").read_text())
    print("parity aoti", json.dumps({k: v for k, v in parity.get("aoti", {}).items() if k != "detail"}))
    if not manifest["aoti"]:
        return 1
    rng = np.random.default_rng(0)
    clips = []
    for i, prompt in enumerate(["a calm piano piece", "x", "fast drums with loud bass"]):
        path = out / f"c{i}.wav"
        sf.write(path, (0.2 * rng.standard_normal(16000 * (i + 1))).astype(np.float32), 16000)
        clips.append((str(path), prompt))
    got = Scorer(bundle, backend="aoti", device="cuda", decode_workers=0).score(clips)
    ref = Scorer(bundle.parent / "run", backend="torch", device="cpu", decode_workers=0).score(clips)
    print("aoti cuda vs torch cpu max |d MI|", max(abs(a.mi - b.mi) for a, b in zip(got, ref)),
          "max |d TA|", max(abs(a.ta - b.ta) for a, b in zip(got, ref)))
    try:
        Scorer(bundle, backend="aoti", device="cpu", decode_workers=0)
    except Exception as exc:  # the expected refusal
        print("cpu refusal:", exc)
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
