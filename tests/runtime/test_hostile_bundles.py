"""Hostile bundles, built from the tiny model by an author who also writes every hash in ``deramos.json``.

Each case of issue 24 goes through ``deramos-rt score``: refused in one line with exit 2, no traceback,
nothing written to ``--out``'s folder. Native code is faked (a ``tensorrt`` module, torch's AOTInductor
loader) to show that nothing is deserialised or loaded before the refusal, and that it would be with the
user's word.
"""

from __future__ import annotations

import json
import re
import shutil

import pytest

from deramos_rt.bundle import MANIFEST, _path_problem, file_sha256
from deramos_rt.cli import main
from tests.runtime.conftest import write_manifest

GRAPH_NAMES = ("audio", "text", "ta")


def _rehash(root, manifest):
    """The author rewrites every listed file's size and hash (links keep what the case wrote)."""
    for rel, entry in manifest["files"].items():
        path = root / rel
        if _path_problem(rel) is None and path.is_file() and not path.is_symlink():
            entry.update(bytes=path.stat().st_size, sha256=file_sha256(path))


@pytest.fixture
def hostile(tiny_bundle, tmp_path):
    """``make(change)``: a copy of the tiny bundle changed by ``change(root, manifest)``, hashes rewritten."""
    made = []

    def make(change):
        root = tmp_path / f"hostile{len(made)}"
        made.append(root)
        shutil.copytree(tiny_bundle, root)
        manifest = json.loads((root / MANIFEST).read_text())
        change(root, manifest)
        _rehash(root, manifest)
        (root / MANIFEST).write_text(json.dumps(manifest))
        return root
    return make


@pytest.fixture
def score(clips, tmp_path, capsys):
    """``score(bundle, *args)`` -> (exit code, stderr, the FAILED line or None), checking nothing was written."""
    manifest = write_manifest(tmp_path / "clips.csv", clips[:2])
    out_dir = tmp_path / "out"
    out_dir.mkdir()

    def run(bundle, *args, expect_written=False):
        code = main(["score", str(manifest), "--out", str(out_dir / "scores.csv"), "--bundle", str(bundle), *args])
        err = capsys.readouterr().err
        assert "Traceback" not in err
        failed = [line for line in err.splitlines() if "FAILED deramos-rt" in line]
        assert bool(list(out_dir.iterdir())) == expect_written, list(out_dir.iterdir())
        return code, err, failed[0] if len(failed) == 1 else None
    return run


def refused(score, bundle, pattern, *args):
    code, err, line = score(bundle, *args)
    assert code == 2 and line is not None and re.search(pattern, line), err[-3000:]
    return line


def _outside_graph(root, manifest):
    shutil.copy(root / "text.fp32.onnx", root.parent / "elsewhere.onnx")


def _tokenizer(root):
    return json.loads((root / "tokenizer.json").read_text())


def _set_tokenizer(root, data):
    (root / "tokenizer.json").write_text(json.dumps(data))


def _three_tokens(root, manifest):
    data = _tokenizer(root)
    data["model"]["vocab"] = {"[PAD]": 0, "[UNK]": 1, "a": 2}
    data["post_processor"] = None
    _set_tokenizer(root, data)
    manifest["text"].update(vocab_size=3, pad_id=0)


def _cls_past_the_embedding(root, manifest):
    data = _tokenizer(root)
    data["post_processor"]["special_tokens"]["[CLS]"]["ids"] = [100000]
    _set_tokenizer(root, data)


def _manifest_claims_a_larger_vocabulary(root, manifest):
    """A tokenizer with 200 more (real) tokens and a manifest agreeing with it; the graph's embedding is smaller."""
    data = _tokenizer(root)
    size = len(data["model"]["vocab"])
    data["model"]["vocab"].update({f"filler{i}": size + i for i in range(200)})
    _set_tokenizer(root, data)
    manifest["text"]["vocab_size"] = size + 200


CASES = {
    "absolute graph path": (
        lambda root, m: (_outside_graph(root, m),
                         m["variants"]["fp32"]["files"].update(text=str(root.parent / "elsewhere.onnx"))),
        r"manifest entry variants\.fp32\.files\.text = '/.*elsewhere\.onnx' is an absolute path"),
    "../ graph path": (
        lambda root, m: (_outside_graph(root, m), m["variants"]["fp32"]["files"].update(text="../elsewhere.onnx")),
        r"variants\.fp32\.files\.text = '\.\./elsewhere\.onnx' is not a normalised path"),
    "unlisted file": (
        lambda root, m: (shutil.copy(root / "text.fp32.onnx", root / "extra.onnx"),
                         m["variants"]["fp32"]["files"].update(text="extra.onnx")),
        r"variants\.fp32\.files\.text = 'extra\.onnx' is not listed in the manifest's files table"),
    "files entry outside": (
        lambda root, m: m["files"].update({"../../../../etc/shadow": {"bytes": 1, "sha256": "0" * 64}}),
        r"files\['\.\./\.\./\.\./\.\./etc/shadow'\] = .* is not a normalised path"),
    "tokenizer path outside": (
        lambda root, m: m["text"].update(tokenizer="../../../../etc/passwd"),
        r"text\.tokenizer = '\.\./\.\./\.\./\.\./etc/passwd' is not a normalised path"),
    "3-token tokenizer, manifest agreeing": (
        _three_tokens, r"tokenizer .*tokenizer\.json has only 3 tokens; this is not a real vocabulary"),
    "token ids past the embedding": (
        _cls_past_the_embedding, r"can produce token id 100000, past its vocabulary of \d+ tokens"),
    "manifest vocabulary larger than the embedding": (
        _manifest_claims_a_larger_vocabulary,
        r"the text graph of .* rejects token id \d+ .*its embedding is smaller than the tokenizer's vocabulary"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_manifest_is_refused_in_one_line(hostile, score, case):
    change, pattern = CASES[case]
    refused(score, hostile(change), pattern, "--backend", "onnxruntime")


def test_the_untouched_copy_scores(hostile, score):
    """The control: the same copy-and-rehash, with no change, scores (so the refusals above are the cases')."""
    code, err, line = score(hostile(lambda root, m: None), "--backend", "onnxruntime", expect_written=True)
    assert code == 0 and line is None, err[-2000:]


def test_a_files_entry_linking_outside_tells_nothing_about_its_target(hostile, score, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 1234)

    def link(root, manifest):
        (root / "shadow").symlink_to(secret)
        manifest["files"]["shadow"] = {"bytes": 1, "sha256": "0" * 64}

    line = refused(score, hostile(link), r"bundle file shadow of .* is a link leading outside the bundle to something "
                                         "that does not match its size and sha256")
    assert "1234" not in line
    inside = hostile(lambda root, m: m["files"].update({"shadow": {"bytes": 1, "sha256": "0" * 64}}))
    (inside / "shadow").write_bytes(b"s" * 1234)  # the same, inside the bundle: its own size may be told
    refused(score, inside, r"shadow has 1234 bytes, the manifest says 1")


def test_oversized_manifest_is_refused_unread(hostile, score):
    root = hostile(lambda root, m: None)
    with open(root / MANIFEST, "r+b") as f:
        f.truncate(300 << 20)  # sparse: instant, no disk
    refused(score, root, r"deramos\.json is larger than the 4 MB a bundle manifest may have")


def test_deeply_nested_manifest_is_refused_without_recursion_error(hostile, score):
    root = hostile(lambda root, m: None)
    (root / MANIFEST).write_bytes(b'{"format": "deramos-bundle", "x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    refused(score, root, r"deramos\.json nests deeper than 32 levels")


def _external(root, manifest, location):
    """The TA graph's largest initializer moved to external data named ``location``."""
    from tests.runtime.test_bundle import _with_external_data

    return _with_external_data(root / "ta.fp32.onnx", location)


def test_external_data_escaping_or_unlisted_is_refused(hostile, score, tmp_path):
    def escaping(root, manifest):
        (root.parent / "ta.weights").write_bytes(_external(root, manifest, "../ta.weights"))

    refused(score, hostile(escaping), r"graph ta\.fp32\.onnx names external data '\.\./ta\.weights', which is not a "
                                      "plain relative path")

    def unlisted(root, manifest):
        (root / "ta.weights").write_bytes(_external(root, manifest, "ta.weights"))

    refused(score, hostile(unlisted), r"graph ta\.fp32\.onnx loads external data 'ta\.weights', which is not listed")


def test_external_data_through_a_hash_checked_link_out_is_refused_by_onnxruntime(hostile, score, tmp_path):
    def linked(root, manifest):
        (tmp_path / "shared.weights").write_bytes(_external(root, manifest, "ta.weights"))
        (root / "ta.weights").symlink_to(tmp_path / "shared.weights")
        manifest["files"]["ta.weights"] = {"bytes": (tmp_path / "shared.weights").stat().st_size,
                                           "sha256": file_sha256(tmp_path / "shared.weights")}

    refused(score, hostile(linked), r"ONNX Runtime (cannot load graph file|could not create a session for) .*ta\.fp32\.onnx.*escapes model directory",
            "--backend", "onnxruntime")


# --------------------------------------------------------------------------------------------- native code


def _with_engines(root, manifest):
    for graph in GRAPH_NAMES:
        rel = f"tensorrt/trt10.16.1-sm90/{graph}.fp16.plan"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"PLAN-" + graph.encode())
        manifest["files"][rel] = {}
    manifest["tensorrt"] = [{"key": "trt10.16.1-sm90", "trt_version": "10.16.1", "compute_capability": [9, 0],
                             "precision": "fp16", "tf32": False, "files": {g: f"tensorrt/trt10.16.1-sm90/{g}.fp16.plan"
                                                            for g in GRAPH_NAMES}, "profiles": {}}]


def _with_packages(device):
    def change(root, manifest):
        import torch

        from deramos_rt.backends.aoti import cpu_isa

        (root / "aoti").mkdir()
        for graph in GRAPH_NAMES:
            (root / "aoti" / f"{graph}.pt2").write_bytes(b"compiled code")
            manifest["files"][f"aoti/{graph}.pt2"] = {}
        manifest["aoti"] = {"files": {g: f"aoti/{g}.pt2" for g in GRAPH_NAMES}, "torch_version": torch.__version__,
                            "device": device, "precision": "fp32", "isa": cpu_isa()}
    return change


@pytest.fixture
def fake_tensorrt(monkeypatch):
    """The strict TensorRT / cuda-python fakes (tests/fake_gpu.py), recording every plan handed to the
    deserialiser, which refuses them all ("could not load": enough to see that it got there)."""
    from tests import fake_gpu

    deserialised = []
    trt, _ = fake_gpu.install(monkeypatch)
    monkeypatch.setattr(trt, "_deserialize", lambda plan: deserialised.append(bytes(plan)))
    return deserialised


@pytest.fixture
def fake_aoti_loader(monkeypatch):
    """torch's AOTInductor loader replaced by a recorder (a .pt2 is a shared library: never really loaded here)."""
    import torch._inductor

    loaded = []

    def load(path, **kwargs):
        loaded.append(path)
        raise RuntimeError("fake loader: not a package")
    monkeypatch.setattr(torch._inductor, "aoti_load_package", load)
    return loaded


def test_tensorrt_engines_of_an_untrusted_bundle_are_never_deserialised(hostile, score, fake_tensorrt,
                                                                        monkeypatch, tmp_path):
    monkeypatch.setenv("DERAMOS_CACHE", str(tmp_path / "cache"))
    root = hostile(_with_engines)
    args = ("--backend", "tensorrt", "--device", "cuda", "--precision", "fp16")
    line = refused(score, root, r"not trusted to run native code: its TensorRT engines are compiled code.*"
                                r"--trust-bundle.*deramos-rt trust", *args)
    assert fake_tensorrt == [] and "Scorer(..., trust_bundle=True)" in line
    refused(score, root, r"TensorRT could not load the audio engine", *args, "--trust-bundle")
    assert fake_tensorrt == [b"PLAN-audio"]  # with the user's word it does reach the deserialiser


def test_aoti_packages_of_an_untrusted_bundle_are_never_loaded(hostile, score, fake_aoti_loader, monkeypatch,
                                                               tmp_path, capsys):
    monkeypatch.setenv("DERAMOS_CACHE", str(tmp_path / "cache"))
    root = hostile(_with_packages("cpu"))
    refused(score, root, r"not trusted to run native code: its AOTInductor packages", "--backend", "aoti")
    assert fake_aoti_loader == []
    refused(score, root, r"cannot load AOTInductor package .*audio\.pt2", "--backend", "aoti", "--trust-bundle")
    assert len(fake_aoti_loader) == 1
    assert main(["trust", str(root)]) == 0 and "AOTInductor packages (cpu)" in capsys.readouterr().out
    refused(score, root, r"cannot load AOTInductor package .*audio\.pt2", "--backend", "aoti")  # trusted once: loads
    assert len(fake_aoti_loader) == 2


def test_auto_skips_untrusted_native_code_and_scores_with_onnx(hostile, score, fake_tensorrt, fake_aoti_loader,
                                                               monkeypatch, tmp_path):
    import deramos_rt.backends as backends

    monkeypatch.setenv("DERAMOS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(backends, "gpu_present", lambda: True)  # a GPU machine: auto would try native code first
    monkeypatch.setattr(backends, "ort_providers", lambda: ["CPUExecutionProvider"])
    # A CPU the bundle's calibration has no rates for: the fixed order decides, not timings taken while the
    # fixture was built (on a loaded machine fp32 can measure ahead of int8).
    from deramos_rt.backends import calibration

    monkeypatch.setattr(calibration, "cpu_key", lambda features=None: "uncalibrated test CPU|avx2+avx512f+avx512_vnni")

    def both(root, manifest):
        _with_engines(root, manifest)
        _with_packages("cuda")(root, manifest)

    code, err, line = score(hostile(both), expect_written=True)
    assert code == 0 and line is None, err[-3000:]
    assert re.search(r"auto: skipping tensorrt .*not trusted to run native code", err)
    assert re.search(r"auto: skipping aoti .*not trusted to run native code", err)
    assert "auto: backend onnxruntime int8 on cpu" in err
    assert fake_tensorrt == [] and fake_aoti_loader == []
