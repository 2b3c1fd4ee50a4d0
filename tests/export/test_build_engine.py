"""Bundles from tiny runs: round trip per precision, the parity gate, integrity checks, CLI errors."""

import json
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from deramos_rt.bundle import load_bundle, write_manifest  # noqa: E402
from deramos_rt.errors import DeramosError  # noqa: E402
from export import build_engine  # noqa: E402
from export.testing import tiny_bundle, write_random_run  # noqa: E402


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    return tiny_bundle(tmp_path_factory.mktemp("tiny"), precisions=("fp32", "fp16"))


def test_bundle_is_complete_and_scores_like_torch(bundle_dir):
    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    assert set(bundle.variants) == {"fp32", "fp16"}
    assert manifest["audio"] == {"sample_rate": 16000, "clip_seconds": 2.0, "resampler": "soxr", "num_samples": 32000}
    assert manifest["model"]["head"] == "distribution" and len(manifest["model"]["bins"]) == 20
    assert manifest["graphs"]["text"]["inputs"][0] == {"name": "input_ids", "dtype": "int64",
                                                        "shape": ["batch", "tokens"]}
    assert [o["name"] for o in manifest["graphs"]["audio"]["outputs"]] == ["mi_probs", "audio_x"]
    assert set(manifest["files"]) == {p.name for p in bundle_dir.iterdir() if p.name != "deramos.json"}
    # mkdtemp's 0700 is not what a published bundle should keep.
    assert bundle_dir.stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in bundle_dir.iterdir()} == {0o644}
    assert len(manifest["source"]["config_sha256"]) == 64 and manifest["versions"]["onnxruntime"]
    assert bundle.tokenizer().vocab_size == manifest["text"]["vocab_size"]
    parity = json.loads((bundle_dir / "parity.json").read_text())
    fp32 = parity["variants"]["fp32"]
    assert fp32["status"] == "passed" and fp32["mi_max_abs"] <= 1e-3 and fp32["ta_max_abs"] <= 1e-3
    assert parity["inputs"]["ta_pairs"] >= 32 and parity["cpu"]["model"]
    # fp16 runs on this ORT CPU provider, so it was checked, not just kept.
    assert parity["variants"]["fp16"]["status"] == "passed"


def test_int8_round_trip_on_a_random_run_is_kept_or_dropped_with_its_reason(tmp_path):
    """An untrained run's scores barely vary, so int8 may miss its SRCC floor: either outcome must be whole."""
    run = write_random_run(tmp_path / "run", seed=3)
    out = build_engine.build_bundle(run, tmp_path / "bundle", ("fp32", "int8"), int8_min_bytes=0,
                                    parity_files=2, parity_random=6)
    bundle = load_bundle(out)
    result = json.loads((out / "parity.json").read_text())["variants"]["int8"]
    assert result["mi_max_abs"] < 0.5 and result["ta_max_abs"] < 0.5  # int8 ran, near the fp32 scores
    if result["kept"]:
        assert result["status"] == "passed" and set(bundle.variants) == {"fp32", "int8"}
        assert bundle.variants["int8"]["files"]["ta"] == "ta.fp32.onnx"  # the TA graph is shared
    else:
        assert result["status"].startswith(("failed: MI ", "failed: TA ")), result["status"]
        assert set(bundle.variants) == {"fp32"} and not list(out.glob("*.int8.onnx"))
        assert not any(".int8." in name for name in bundle.manifest["files"])


@pytest.mark.slow
def test_int8_round_trip_on_a_trained_tiny_run(fixture_corpus, tmp_path):
    """int8 is gated on SRCC too, which needs scores that vary: a (briefly) trained run, not random weights."""
    from training import train

    run = tmp_path / "run"
    assert train.main(["--data", str(fixture_corpus), "--out", str(run), "--cache-dir", str(tmp_path / "cache"),
                       "--recipe", "tiny", "--epochs", "3", "--patience", "5"]) == 0
    out = build_engine.build_bundle(run, tmp_path / "bundle", ("fp32", "int8"), int8_min_bytes=0)
    bundle = load_bundle(out)
    assert set(bundle.variants) == {"fp32", "int8"}
    files = bundle.variants["int8"]["files"]
    assert files["audio"] == "audio.int8.onnx" and files["ta"] == "ta.fp32.onnx"  # the TA graph is shared
    result = json.loads((out / "parity.json").read_text())["variants"]["int8"]
    assert result["status"] == "passed" and result["ta_srcc"] >= 0.99 and "speed_vs_fp32" in result


def test_copied_bundle_loads_and_integrity_failures_are_refused(bundle_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir, copy)
    assert load_bundle(copy).sha256 == load_bundle(bundle_dir).sha256
    graph = copy / "ta.fp32.onnx"
    original = graph.read_bytes()
    graph.write_bytes(original[:-10])
    with pytest.raises(DeramosError, match="ta.fp32.onnx has .* bytes.*truncated"):
        load_bundle(copy)
    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF
    graph.write_bytes(bytes(flipped))
    with pytest.raises(DeramosError, match="does not match its sha256"):
        load_bundle(copy)
    graph.write_bytes(original)
    manifest = json.loads((copy / "deramos.json").read_text())
    manifest["files"]["text.fp32.onnx"]["sha256"] = "0" * 64
    (copy / "deramos.json").write_text(json.dumps(manifest))
    with pytest.raises(DeramosError, match="text.fp32.onnx does not match"):
        load_bundle(copy)
    manifest = json.loads((bundle_dir / "deramos.json").read_text())
    manifest["format_version"] = 99
    (copy / "deramos.json").write_text(json.dumps(manifest))
    with pytest.raises(DeramosError, match="format version 99"):
        load_bundle(copy)
    (copy / "deramos.json").write_text((bundle_dir / "deramos.json").read_text())
    (copy / "tokenizer.json").unlink()
    with pytest.raises(DeramosError, match="tokenizer.json is missing"):
        load_bundle(copy)


def test_parity_gate_fails_a_broken_graph(bundle_dir, tmp_path):
    import onnx
    from onnx import numpy_helper

    from export import parity
    from training.checkpoint import load_run
    from training.model import build_tokenizer

    copy = tmp_path / "broken"
    shutil.copytree(bundle_dir, copy)
    path = copy / "ta.fp32.onnx"
    model = onnx.load(str(path))
    for weight in model.graph.initializer:  # every TA weight off by 50%
        array = numpy_helper.to_array(weight)
        if array.dtype == np.float32 and array.size > 1:
            weight.CopyFrom(numpy_helper.from_array(array * 1.5, weight.name))
    onnx.save(model, str(path))
    manifest = json.loads((copy / "deramos.json").read_text())
    write_manifest(copy, {k: v for k, v in manifest.items() if k not in ("format", "format_version", "files")})
    torch_model, _ = load_run(bundle_dir.parent / "run")
    report = parity.run_gate(torch_model, build_tokenizer(torch_model), copy, ("fp32",), files=2, random_clips=6)
    assert report["variants"]["fp32"]["status"].startswith("failed: TA max |delta MOS|")
    assert not report["variants"]["fp32"]["kept"]


def test_build_refuses_when_every_asked_variant_fails(tmp_path, monkeypatch):
    from export import verify

    run = write_random_run(tmp_path / "run")
    monkeypatch.setitem(verify.LIMITS, "fp32", {"max_abs": -1.0, "srcc": None})  # nothing can pass
    with pytest.raises(DeramosError, match="no asked-for precision passed the parity gate"):
        build_engine.build_bundle(run, tmp_path / "out", ("fp32",), parity_files=1, parity_random=2)
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no half-written folder left behind


def test_scalar_head_run_exports(tmp_path):
    run = write_random_run(tmp_path / "run", head="scalar")
    out = build_engine.build_bundle(run, tmp_path / "bundle", ("fp32",), parity_files=2, parity_random=6)
    manifest = load_bundle(out).manifest
    assert manifest["model"]["bins"] is None
    assert manifest["graphs"]["ta"]["outputs"][0]["name"] == "ta_score"


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert build_engine.main(["--run", str(tmp_path / "nope"), "--out", str(tmp_path / "b")]) == 2
    assert "no such run directory" in capsys.readouterr().err
    run = write_random_run(tmp_path / "run")
    assert build_engine.main(["--run", str(run), "--out", str(tmp_path / "b"), "--precision", "fp8"]) == 2
    assert "unknown precision fp8" in capsys.readouterr().err
    (run / "model.safetensors").unlink()
    assert build_engine.main(["--run", str(run), "--out", str(tmp_path / "b")]) == 2
    assert "model.safetensors" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
