"""The bundle's confinement and limits, one mechanism at a time (the CLI cases are in test_hostile_bundles.py)."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from deramos_rt import bundle as bundle_module
from deramos_rt.bundle import MANIFEST, file_sha256, load_bundle
from deramos_rt.errors import DeramosError


def _copy(tiny_bundle, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(tiny_bundle, root)
    return root, json.loads((root / MANIFEST).read_text())


def _save(root, manifest):
    (root / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("value, problem", [
    ("/etc/passwd", "is an absolute path"),
    ("C:/weights.onnx", "is an absolute path"),
    ("../outside.onnx", "is not a normalised path"),
    ("sub/../../x", "is not a normalised path"),
    ("./text.fp32.onnx", "is not a normalised path"),
    ("a//b", "is not a normalised path"),
    ("dir/", "is not a normalised path"),
    ("..\\..\\x", "contains a backslash"),
    ("text.onnx\x00.txt", "contains a control character"),
    ("line\nbreak", "contains a control character"),
    ("", "is not a non-empty string"),
    (7, "is not a non-empty string"),
    ("x" * 2000, "is longer than 1024 characters"),
    (MANIFEST, "names the manifest itself"),
])
def test_path_problems(value, problem):
    assert problem in bundle_module._path_problem(value)


@pytest.mark.parametrize("value", ["tokenizer.json", "tensorrt/trt10.16.1-sm90/audio.fp16.plan", "aoti/ta.pt2",
                                   "a..b.onnx", "...hidden"])
def test_plain_relative_paths_pass(value):
    assert bundle_module._path_problem(value) is None


def test_depth_scan_ignores_brackets_in_strings_and_stops_early():
    within = bundle_module._depth_within
    assert within(b'{"a": [[1, 2], {"b": "[[[[[["}]}', 3)
    assert not within(b'{"a": [[1, 2], {"b": "x"}]}', 2)
    assert within(b'{"s": "\\"]]]]]]]]]]]]\\\\", "t": [[[]]]}', 4)
    assert not within(b'{"s": "]]]]]]]]]]]]]]]]]]]]", "t": [[[[[]]]]]}', 4)  # closers in a string do not count
    assert within(b'{"unterminated": "[[[[[[[[', 2)  # left to json.loads to report
    assert not within(b"[" * 100_000, 32)


def test_manifest_limits_come_before_parsing(tiny_bundle, tmp_path, monkeypatch):
    root, manifest = _copy(tiny_bundle, tmp_path)
    monkeypatch.setattr(bundle_module.json, "loads", lambda raw: pytest.fail("parsed"))
    (root / MANIFEST).write_bytes(b"[" * 40 + b"]" * 40)
    with pytest.raises(DeramosError, match="nests deeper than 32 levels"):
        load_bundle(root)
    with open(root / MANIFEST, "wb") as f:
        f.write(b'{"format": "deramos-bundle"')
        f.truncate(300 << 20)  # sparse: 300 MB on paper, nothing on disk
    with pytest.raises(DeramosError, match=r"larger than the 4 MB .*\(314572800 bytes\).*refused unread"):
        load_bundle(root)


def test_manifest_link_outside_the_bundle_says_nothing_about_its_target(tiny_bundle, tmp_path):
    root, manifest = _copy(tiny_bundle, tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:$6$salt$hash:19000:0:99999:7:::\n" * 200000)  # 7.4 MB, not JSON
    (root / MANIFEST).unlink()
    (root / MANIFEST).symlink_to(secret)
    with pytest.raises(DeramosError) as caught:
        load_bundle(root)
    assert str(secret.stat().st_size) not in str(caught.value) and "larger than" in str(caught.value)
    secret.write_text("root:x:0:0\n")
    with pytest.raises(DeramosError, match=r"is not valid JSON$"):
        load_bundle(root)


def test_a_fifo_or_device_is_refused_without_blocking(tiny_bundle, tmp_path):
    root, manifest = _copy(tiny_bundle, tmp_path)
    os.mkfifo(root / "pipe")
    manifest["files"]["pipe"] = {"bytes": 10, "sha256": "0" * 64}
    _save(root, manifest)
    with pytest.raises(DeramosError, match="pipe is not a regular file"):
        load_bundle(root)
    del manifest["files"]["pipe"]
    (root / "zero").symlink_to("/dev/zero")
    manifest["files"]["zero"] = {"bytes": 10, "sha256": "0" * 64}
    _save(root, manifest)
    with pytest.raises(DeramosError, match="zero of .* is a link leading outside the bundle"):
        load_bundle(root)


def test_links_inside_stay_allowed_and_links_outside_need_their_hash(tiny_bundle, tmp_path):
    """A shared cache links files in from elsewhere: accepted when the target matches its listed hash."""
    root, manifest = _copy(tiny_bundle, tmp_path)
    shared = tmp_path / "blobs"
    shared.mkdir()
    (root / "tokenizer.json").rename(shared / "tok")
    (root / "tokenizer.json").symlink_to(shared / "tok")
    bundle = load_bundle(root)
    assert bundle.verified and bundle.tokenizer().vocab_size == manifest["text"]["vocab_size"]
    with pytest.raises(DeramosError, match="tokenizer.json of .* is a link leading outside the bundle, which is "
                                           "accepted only when its target is hash-checked"):
        load_bundle(root, verify=False)
    (shared / "tok").write_text((shared / "tok").read_text().replace("piano", "pianO"))
    with pytest.raises(DeramosError, match="tokenizer.json of .* is a link leading outside the bundle to something "
                                           "that does not match"):
        load_bundle(root)


def test_path_and_graph_path_refuse_unlisted_files(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    assert bundle.path("tokenizer.json") == bundle.root / "tokenizer.json"
    assert bundle.graph_path("fp32", "text").name == "text.fp32.onnx"
    for name in (MANIFEST, "../etc/passwd", "not-there.onnx", None):
        with pytest.raises(DeramosError, match="is not a file listed in its manifest"):
            bundle.path(name)
    with pytest.raises(DeramosError, match="has no 'fp16' graphs; it has: fp32, int8"):
        bundle.graph_path("fp16", "audio")


@pytest.mark.parametrize("change, message", [
    (lambda m: m["files"].update({"x": {"bytes": "12", "sha256": "0" * 64}}), r"files\['x'\] must be \{bytes"),
    (lambda m: m["files"].update({"x": {"bytes": 12, "sha256": "ABC"}}), r"files\['x'\] must be \{bytes"),
    (lambda m: m["variants"]["fp32"]["files"].pop("ta"), "variants.fp32.files does not name the ta graph"),
    (lambda m: m.update(tensorrt={"files": {}}), "manifest entry tensorrt is not a list"),
    (lambda m: m.update(aoti={"files": {"audio": "a.pt2"}}), "aoti.files does not name the text, ta graph"),
    (lambda m: m["source"].update(provenance="/home/me/provenance.json"), "source.provenance = .* is an absolute"),
    (lambda m: m["variants"]["int8"].update(files_all=["../x"]), r"variants.int8.files_all\[0\] = '../x'"),
    (lambda m: m["graphs"]["text"].update(outputs=[{}]), "graphs.text.outputs must be a list of"),
    (lambda m: m.update(files=[]), "the 'files' section is not a JSON object"),
])
def test_malformed_path_sections_are_one_line_errors(tiny_bundle, tmp_path, change, message):
    root, manifest = _copy(tiny_bundle, tmp_path)
    change(manifest)
    _save(root, manifest)
    with pytest.raises(DeramosError, match=message) as caught:
        load_bundle(root)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("section, value, message", [
    ("audio", {"sample_rate": 16000, "clip_seconds": 1e9},
     r"audio.clip_seconds must be a number of seconds in \(0, 300\]"),
    ("audio", {"sample_rate": "16k", "clip_seconds": 2.0}, "audio.sample_rate must be an integer"),
    ("model", {"head": "distribution", "bins": ["1", 2]}, "model.bins must be a list of 2 to 1000 finite numbers"),
    ("model", {"head": "nonsense"}, "model.head must be 'distribution' or 'scalar'"),
])
def test_field_values_are_checked_where_they_are_read(tiny_bundle, tmp_path, section, value, message):
    root, manifest = _copy(tiny_bundle, tmp_path)
    manifest[section] = value
    _save(root, manifest)
    bundle = load_bundle(root)
    with pytest.raises(DeramosError, match=message):
        bundle.protocol if section == "audio" else (bundle.head, bundle.bins)


def _with_external_data(graph_path, location: str):
    """Rewrite an ONNX graph so that its largest initializer lives in ``location`` (relative to the graph)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_model(str(graph_path))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    data = numpy_helper.to_array(tensor).tobytes()
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(len(data)))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    graph_path.write_bytes(model.SerializeToString())
    return data


def test_external_locations_match_onnx_and_reach_subgraphs_and_functions(tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from deramos_rt.onnx_external import external_locations, scan_locations

    def external(name, location):
        tensor = numpy_helper.from_array(np.ones(2, np.float32), name)
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        tensor.external_data.add(key="location", value=location)
        return tensor

    inner = helper.make_graph([helper.make_node("Constant", [], ["c"], value=external("k", "in-subgraph.bin"))],
                              "inner", [], [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2])])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=inner, else_branch=inner)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
                              [external("w", "weights.bin"), numpy_helper.from_array(np.zeros(3, np.float32), "z")])
    function = helper.make_function("local", "f", [], ["o"], [helper.make_node(
        "Constant", [], ["o"], value=external("fk", "../in-function.bin"))], [helper.make_opsetid("", 17)])
    model = helper.make_model(graph, functions=[function], opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    assert external_locations(path) == {"weights.bin", "in-subgraph.bin", "../in-function.bin"}
    from onnx.external_data_helper import _get_all_tensors

    onnx_view = {e.value for t in _get_all_tensors(onnx.load_model(str(path), load_external_data=False))
                 for e in t.external_data if e.key == "location"}
    assert {"weights.bin", "in-subgraph.bin"} <= onnx_view  # onnx's own walk (it skips function bodies)
    assert scan_locations(b"") == set()
    with pytest.raises(ValueError, match="runs past the end"):
        scan_locations(model.SerializeToString()[:-5])
    path.write_bytes(b"\xff" * 64)
    with pytest.raises(DeramosError, match="m.onnx is not a well-formed ONNX model"):
        external_locations(path)


def test_unlisted_or_escaping_external_data_refuses_the_bundle(tiny_bundle, tmp_path):
    root, manifest = _copy(tiny_bundle, tmp_path)
    data = _with_external_data(root / "ta.fp32.onnx", "ta.weights")
    (root / "ta.weights").write_bytes(data)
    manifest["files"]["ta.fp32.onnx"] = {"bytes": (root / "ta.fp32.onnx").stat().st_size,
                                         "sha256": file_sha256(root / "ta.fp32.onnx")}
    _save(root, manifest)
    with pytest.raises(DeramosError, match="graph ta.fp32.onnx loads external data 'ta.weights', which is not listed"):
        load_bundle(root)
    manifest["files"]["ta.weights"] = {"bytes": len(data), "sha256": file_sha256(root / "ta.weights")}
    _save(root, manifest)
    assert load_bundle(root).verified  # listed and hashed: fine
    _with_external_data(root / "ta.fp32.onnx", "../ta.weights")
    manifest["files"]["ta.fp32.onnx"] = {"bytes": (root / "ta.fp32.onnx").stat().st_size,
                                         "sha256": file_sha256(root / "ta.fp32.onnx")}
    _save(root, manifest)
    with pytest.raises(DeramosError, match="names external data .*, which is not a plain relative path"):
        load_bundle(root)


def test_onnxruntime_refuses_external_data_that_leaves_the_folder_through_a_listed_link(tiny_bundle, tmp_path):
    """The bundle accepts a hash-checked link leading out; ONNX Runtime (>= 1.32) still refuses to read external
    data from outside the model's folder, and the backend turns that into one line. This test relies on it."""
    from deramos_rt.backends.onnxruntime import OnnxRuntimeBackend

    root, manifest = _copy(tiny_bundle, tmp_path)
    data = _with_external_data(root / "ta.fp32.onnx", "ta.weights")
    (tmp_path / "shared-ta.weights").write_bytes(data)
    (root / "ta.weights").symlink_to(tmp_path / "shared-ta.weights")
    for rel in ("ta.fp32.onnx", "ta.weights"):
        manifest["files"][rel] = {"bytes": (root / rel).stat().st_size, "sha256": file_sha256(root / rel)}
    _save(root, manifest)
    bundle = load_bundle(root)
    with pytest.raises(DeramosError, match=r"(cannot load graph file|could not create a session for) .*ta\.fp32\.onnx.*escapes model directory") as caught:
        OnnxRuntimeBackend(bundle, "cpu", "fp32")
    assert "\n" not in str(caught.value)
    (root / "ta.weights").unlink()
    (root / "ta.weights").write_bytes(data)  # the same bytes inside the folder load
    OnnxRuntimeBackend(load_bundle(root), "cpu", "fp32").close()
