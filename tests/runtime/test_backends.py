"""Backend registry, the auto choice, and parity between the torch and ONNX Runtime backends."""

from __future__ import annotations

import numpy as np
import pytest

from deramos_rt.backends import BACKENDS, _auto_candidates, backend_class, missing_packages, open_backend
from deramos_rt.bundle import load_bundle
from deramos_rt.errors import DeramosError
from deramos_rt.models import run_dir
from deramos_rt.scorer import Scorer
from deramos_rt.source import RunSource

DEFAULT_RUN = run_dir("default")


def test_unknown_backend_names_the_choices():
    with pytest.raises(DeramosError, match="choose one of: onnxruntime, tensorrt, aoti, torch, auto"):
        backend_class("trt")


def test_missing_package_names_the_extra(monkeypatch):
    import deramos_rt.backends as backends

    monkeypatch.setattr(backends, "missing_packages", lambda name: ["tensorrt"] if name == "tensorrt" else [])
    with pytest.raises(DeramosError, match="needs tensorrt .extra: none: install tensorrt-cu12"):
        backend_class("tensorrt")
    assert set(BACKENDS) == {"onnxruntime", "tensorrt", "aoti", "torch"}
    assert "torch" not in missing_packages("torch")


def test_backends_refuse_the_wrong_kind_of_source(tiny_run, tiny_bundle):
    with pytest.raises(DeramosError, match="runs a bundle, but .* is a run directory"):
        open_backend("onnxruntime", RunSource(tiny_run))
    with pytest.raises(DeramosError, match="runs a training run directory"):
        open_backend("torch", load_bundle(tiny_bundle))
    with pytest.raises(DeramosError, match="no AOTInductor packages"):
        open_backend("aoti", load_bundle(tiny_bundle))


def test_auto_takes_torch_for_a_run_and_int8_on_cpu_when_its_parity_held(tiny_run, tiny_bundle, caplog):
    caplog.set_level("INFO", logger="deramos_rt.backends")
    assert Scorer(tiny_run).backend.info.name == "torch"
    bundle = load_bundle(tiny_bundle)
    assert [c[:3] for c in _auto_candidates(bundle, "cpu", None)] == [("onnxruntime", "cpu", "int8"),
                                                                       ("onnxruntime", "cpu", "fp32")]
    # The bundle's export measured both on this CPU: auto takes the faster (int8 within 5 %, the fixed order).
    from deramos_rt.backends.calibration import cpu_key, measured_order

    expected = measured_order(bundle.manifest, cpu_key(), _auto_candidates(bundle, "cpu", None))[0][0]
    scorer = Scorer(tiny_bundle, device="cpu")
    assert (scorer.backend.info.name, scorer.backend.info.precision) == (expected[0], expected[2])
    assert f"auto: backend onnxruntime {expected[2]} on cpu" in caplog.text and "measured on this CPU" in caplog.text
    failed = {**bundle.manifest, "variants": {**bundle.variants,
                                              "int8": {**bundle.variants["int8"], "parity": {"status": "failed"}}}}
    assert _auto_candidates(type(bundle)(bundle.root, failed, bundle.sha256), "cpu", None)[0][2] == "fp32"


def _parity(run_dir, bundle, clips, tol):
    reference = Scorer(run_dir, backend="torch", decode_workers=1).score(clips)
    exported = Scorer(bundle, backend="onnxruntime", precision="fp32", decode_workers=1).score(clips)
    mi = max(abs(a.mi - b.mi) for a, b in zip(reference, exported))
    ta = max(abs(a.ta - b.ta) for a, b in zip(reference, exported))
    assert mi < tol and ta < tol, (mi, ta)
    probs = max(np.abs(np.subtract(a.mi_probs, b.mi_probs)).max() for a, b in zip(reference, exported))
    assert probs < tol


def test_torch_and_onnxruntime_agree_on_the_tiny_model(tiny_run, tiny_bundle, clips):
    _parity(tiny_run, tiny_bundle, clips, 1e-5)


@pytest.mark.slow
def test_torch_and_onnxruntime_agree_on_the_default_model(tmp_path_factory, clips):
    from export.build_engine import build_bundle

    bundle = build_bundle(DEFAULT_RUN, tmp_path_factory.mktemp("default") / "bundle",
                          precisions=("fp32",), parity_files=2, parity_random=2)
    _parity(DEFAULT_RUN, bundle, clips[:3], 1e-4)


@pytest.mark.slow
def test_torch_and_onnxruntime_agree_on_a_tiny_muq_model(tmp_path_factory, clips):
    from export.build_engine import build_bundle
    from export.testing import write_random_run
    from training.config import BackboneConfig

    root = tmp_path_factory.mktemp("muq")
    run = write_random_run(root / "run", "tiny", audio=BackboneConfig("muq", {"size": "tiny", "clip_seconds": 2.0}))
    bundle = build_bundle(run, root / "bundle", precisions=("fp32",), parity_files=2, parity_random=2)
    _parity(run, bundle, clips[:3], 1e-4)
