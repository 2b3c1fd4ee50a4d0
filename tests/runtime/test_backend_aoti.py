"""The AOTInductor backend's compatibility checks, from the manifest alone (no compilation)."""

from __future__ import annotations

import json

import numpy as np

import pytest

from deramos_rt.backends.aoti import AotiBackend, check_compatible, cpu_isa, fp32_math
from deramos_rt.bundle import load_bundle, write_manifest
from deramos_rt.errors import DeramosError

SECTION = {"files": {"audio": "aoti/audio.pt2", "text": "aoti/text.pt2", "ta": "aoti/ta.pt2"},
           "torch_version": "2.13.0+cpu", "device": "cpu", "precision": "fp32", "isa": ["avx", "avx2", "fma"]}
HERE = dict(torch_version="2.13.0+cpu", isa=["sse4_2", "avx", "avx2", "fma"], gpu_capability=None)


def test_cpu_isa_reads_the_first_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma avx512f avx512_vnni xyz\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_isa(info) == ["sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_vnni"]
    assert cpu_isa(tmp_path / "missing") == []


def test_matching_packages_run_on_their_device():
    assert check_compatible(SECTION, "B", None, None, **HERE) == "cpu"
    assert check_compatible(SECTION, "B", "cpu", "fp32", **HERE) == "cpu"
    cuda = {**SECTION, "device": "cuda", "gpu": {"name": "H100", "compute_capability": "9.0"}}
    assert check_compatible(cuda, "B", "cuda:1", None, "2.13.0+cpu", ["avx", "avx2", "fma"], "9.0") == "cuda:1"


@pytest.mark.parametrize("section, device, precision, here, message", [
    (None, None, None, HERE, "bundle B has no AOTInductor packages .rebuild it with: python -m export.build_engine"),
    (SECTION, None, None, {**HERE, "torch_version": "2.14.0+cpu"},
     "compiled by torch 2.13.0.cpu, this is torch 2.14.0.cpu: use the onnxruntime backend or rebuild"),
    (SECTION, "cuda", None, HERE, "compiled for cpu, not cuda: .*--aoti-device cuda"),
    ({**SECTION, "device": "cuda"}, "cpu", None, HERE, "compiled for cuda, not cpu"),
    (SECTION, None, "fp16", HERE, "packages are fp32, not fp16"),
    ({**SECTION, "isa": ["avx2", "avx512f", "avx512_vnni"]}, None, None, HERE,
     "compiled for a CPU with avx2, avx512f, avx512_vnni; this CPU lacks avx512f, avx512_vnni"),
    ({**SECTION, "device": "cuda"}, None, None, HERE, "device 'cuda' requested but this torch sees no CUDA GPU"),
    # CUDA packages carry host code compiled with -march=native too.
    ({**SECTION, "device": "cuda", "isa": ["avx2", "avx512f"]}, None, None, {**HERE, "gpu_capability": "9.0"},
     r"compiled for a CPU with avx2, avx512f \(CUDA packages carry host code for it too\); this CPU lacks avx512f"),
    ({**SECTION, "device": "cuda", "gpu": {"compute_capability": "9.0"}}, None, None, {**HERE, "gpu_capability": "8.0"},
     "compute capability 9.0, this GPU is 8.0"),
])
def test_mismatches_are_refused_in_one_line(section, device, precision, here, message):
    with pytest.raises(DeramosError, match=message) as caught:
        check_compatible(section, "B", device, precision, **here)
    assert "\n" not in str(caught.value)


def test_backend_refuses_another_torch_before_loading(tmp_path):
    """A bundle whose packages name another torch: refused from the manifest; the .pt2 files are never read."""
    root = tmp_path / "bundle"
    (root / "aoti").mkdir(parents=True)
    for graph in ("audio", "text", "ta"):
        (root / "aoti" / f"{graph}.pt2").write_bytes(b"not a package")
    manifest = {"model": {}, "audio": {}, "text": {}, "graphs": {}, "variants": {},
                "aoti": {**SECTION, "torch_version": "1.0.0", "isa": cpu_isa()}}
    write_manifest(root, manifest)
    with pytest.raises(DeramosError, match="compiled by torch 1.0.0, this is torch"):
        AotiBackend(load_bundle(root), trust_bundle=True)
    manifest["aoti"]["torch_version"] = __import__("torch").__version__
    write_manifest(root, manifest)
    with pytest.raises(DeramosError, match="cannot load AOTInductor package .*audio.pt2"):
        AotiBackend(load_bundle(root), trust_bundle=True)
    assert json.loads((root / "deramos.json").read_text())["files"]["aoti/ta.pt2"]["bytes"] == 13


def test_fp32_math_turns_tf32_off_and_restores_the_hosts_choice():
    """Fault: only cuDNN's TF32 was turned off; a host that allowed TF32 matmuls got TF32 from "fp32"."""
    import torch

    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = (matmul.fp32_precision, conv.fp32_precision)
    try:
        matmul.fp32_precision = conv.fp32_precision = "tf32"  # what a host program may have chosen
        with fp32_math(torch):
            assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


def test_calls_above_the_packages_batch_range_are_split():
    """The compiled code does not check its batch range (AOTI_RUNTIME_CHECK_INPUTS is off): split instead."""
    import torch

    seen = []

    def graph(wave):
        seen.append(len(wave))
        return wave[:, :3] * 2, wave[:, None, :4]

    backend = AotiBackend.__new__(AotiBackend)  # the packages themselves need a compiler: run a stand-in
    backend._torch, backend._device, backend._graphs, backend.max_batch = torch, torch.device("cpu"), {"audio": graph}, 2
    wave = np.arange(5 * 8, dtype=np.float32).reshape(5, 8)
    mi, audio_x = backend.run_audio(wave)
    assert seen == [2, 2, 1]
    np.testing.assert_array_equal(mi, wave[:, :3] * 2)
    np.testing.assert_array_equal(audio_x, wave[:, None, :4])
