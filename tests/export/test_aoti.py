"""AOTInductor packages in a bundle: options, a failing package dropped with its reason, and (slow: three
Inductor compiles, minutes on two cores) a tiny bundle built with --aoti, gated, and scored by a fresh
process that cannot import the training code."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("onnxruntime")

from deramos_rt.backends.aoti import cpu_isa  # noqa: E402
from deramos_rt.bundle import load_bundle  # noqa: E402
from deramos_rt.errors import DeramosError  # noqa: E402
from export import aoti, build_engine  # noqa: E402
from export.testing import tiny_bundle, write_random_run  # noqa: E402


def test_aoti_device_options_are_checked(tmp_path, capsys):
    run = write_random_run(tmp_path / "run")
    with pytest.raises(DeramosError, match="--aoti-device needs --aoti"):
        build_engine.build_bundle(run, tmp_path / "b", aoti_device="cpu")
    with pytest.raises(DeramosError, match="--aoti-device must be cpu or cuda, got 'tpu'"):
        build_engine.build_bundle(run, tmp_path / "b", aoti=True, aoti_device="tpu")
    import torch

    if not torch.cuda.is_available():
        assert build_engine.main(["--run", str(run), "--out", str(tmp_path / "b"), "--aoti",
                                  "--aoti-device", "cuda"]) == 2
        assert "--aoti-device cuda: this torch" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_packages_that_fail_are_dropped_with_the_reason(tmp_path, monkeypatch):
    """Compilation failing, then packages that do not load: the ONNX bundle is kept, the reason recorded."""
    def broken_compile(model, out_dir, device, max_tokens, max_batch=None):
        raise RuntimeError("inductor: no C++ compiler\nmore detail")

    monkeypatch.setattr(aoti, "build_packages", broken_compile)
    out = tiny_bundle(tmp_path / "a", aoti=True, aoti_device="cpu", parity_files=1, parity_random=2)
    assert load_bundle(out).manifest["aoti"] is None and not (out / "aoti").exists()
    status = json.loads((out / "parity.json").read_text())["aoti"]["status"]
    assert status == "failed: AOTInductor cpu packaging: RuntimeError: inductor: no C++ compiler"

    def garbage_packages(model, out_dir, device, max_tokens, max_batch=None):
        (out_dir / "aoti").mkdir()
        files = {}
        for graph in ("audio", "text", "ta"):
            (out_dir / "aoti" / f"{graph}.pt2").write_bytes(b"not a package")
            files[graph] = f"aoti/{graph}.pt2"
        return aoti.aoti_section(files, device, max_batch, max_tokens)

    monkeypatch.setattr(aoti, "build_packages", garbage_packages)
    out = tiny_bundle(tmp_path / "b", aoti=True, aoti_device="cpu", parity_files=1, parity_random=2)
    manifest = load_bundle(out).manifest
    assert manifest["aoti"] is None and not any("aoti" in name for name in manifest["files"])
    status = json.loads((out / "parity.json").read_text())["aoti"]["status"]
    assert status.startswith("failed: DeramosError: cannot load AOTInductor package")


@pytest.fixture(scope="module")
def aoti_bundle(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("aoti"), aoti=True, aoti_device="cpu", parity_files=2,
                       parity_random=6)


@pytest.mark.slow
def test_bundle_lists_hashes_and_gates_the_packages(aoti_bundle):
    import torch

    bundle = load_bundle(aoti_bundle)
    section = bundle.manifest["aoti"]
    assert section["files"] == {g: f"aoti/{g}.pt2" for g in ("audio", "text", "ta")}
    assert {f for f in bundle.manifest["files"] if f.startswith("aoti/")} == set(section["files"].values())
    assert (section["torch_version"], section["device"], section["isa"]) == (torch.__version__, "cpu", cpu_isa())
    assert section["inductor_configs"] == {"aot_inductor.check_lowerbound": False}
    parity = json.loads((aoti_bundle / "parity.json").read_text())["aoti"]
    assert parity["status"] == "passed" and parity["kept"]
    assert max(parity["mi_max_abs"], parity["ta_max_abs"]) <= 1e-3
    assert section["parity"]["status"] == "passed"


@pytest.mark.slow
def test_fresh_process_without_training_scores_like_torch(aoti_bundle, tmp_path):
    from deramos_rt.scorer import Scorer

    rng = np.random.default_rng(0)
    clips = []
    for i, prompt in enumerate(["a calm piano piece", "x", "fast drums with loud bass and a long noisy tail"]):
        path = tmp_path / f"c{i}.wav"
        sf.write(path, (0.2 * rng.standard_normal(16000 * (i + 1))).astype(np.float32), 16000)
        clips.append((str(path), prompt))
    script = (
        "import json, sys\n"
        "sys.modules['training'] = None\n"  # importing training (or export) now fails
        "sys.modules['export'] = None\n"
        "from deramos_rt.scorer import Scorer\n"
        f"scorer = Scorer({str(aoti_bundle)!r}, backend='aoti', decode_workers=0, batch_size=2)\n"
        f"out = scorer.score({clips!r})\n"
        "print(json.dumps({'name': scorer.backend.info.name, 'mi': [c.mi for c in out], 'ta': [c.ta for c in out]}))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    reference = Scorer(aoti_bundle.parent / "run", backend="torch", decode_workers=0).score(clips)
    assert got["name"] == "aoti"
    assert np.abs(np.subtract(got["mi"], [c.mi for c in reference])).max() < 1e-4
    assert np.abs(np.subtract(got["ta"], [c.ta for c in reference])).max() < 1e-4
