import subprocess
import sys


def test_runtime_imports_no_heavy_frameworks():
    code = (
        "import sys, deramos_rt, deramos_rt.audio, deramos_rt.text, deramos_rt.report;"
        "heavy = [m for m in ('torch', 'onnxruntime', 'tensorrt', 'transformers', 'training') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
