import subprocess
import sys
import textwrap

HEAVY = ("torch", "onnxruntime", "tensorrt", "transformers", "training", "export")


def test_runtime_imports_no_heavy_frameworks():
    code = (
        "import sys, deramos_rt, deramos_rt.audio, deramos_rt.text, deramos_rt.console, deramos_rt.scorer, "
        "deramos_rt.manifest, deramos_rt.scorefile, deramos_rt.jobs, deramos_rt.source, deramos_rt.models, deramos_rt.cli, deramos_rt.pipeline, deramos_rt.backends, deramos_rt.device_resample, deramos_rt.backends.ort_device, deramos_rt.backends.torch;"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_scoring_with_onnxruntime_imports_neither_torch_nor_transformers(tiny_bundle, clips):
    code = textwrap.dedent(f"""
        import sys, time
        start = time.perf_counter()
        from deramos_rt import Scorer
        imported = time.perf_counter() - start
        [result] = Scorer({str(tiny_bundle)!r}, backend="onnxruntime").score([({clips[0][0]!r}, "calm piano")])
        first = time.perf_counter() - start
        assert result.error is None and result.mi is not None, result
        print(",".join(m for m in ("torch", "transformers", "training", "export") if m in sys.modules))
        print(f"import {{imported:.3f}} s, first score {{first:.3f}} s", file=sys.stderr)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", out.stdout
    assert "first score" in out.stderr
