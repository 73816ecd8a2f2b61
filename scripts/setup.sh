#!/usr/bin/env bash
# Idempotent set-up: creates .venv in the repo, installs torch/torchvision, detectron2 and
# hkd_d2 (editable, with test and deploy extras). A second run only checks and returns in seconds.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${HKD_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
TORCH_PIN="torch==2.14.1 torchvision==0.29.1"
D2_PIN="sal-detectron2==0.7.2"
STAMP="$VENV/.hkd_setup_done"

if [ -f "$STAMP" ] && "$VENV/bin/python" -c "import detectron2, torchvision, hkd_d2, onnx, onnxruntime" 2>/dev/null; then
  exit 0
fi

echo "[setup] creating virtual environment in $VENV"
if [ ! -x "$VENV/bin/python" ]; then
  # A detectron2 the user already has (e.g. built from source) is reused through the system site.
  if "$PY" -c "import detectron2, torchvision" 2>/dev/null; then
    echo "[setup] reusing the detectron2 importable by $PY"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
VPY="$VENV/bin/python"
# pip, minus the mirror's harmless "Location ... is ignored" notices; its exit status is kept.
pip_install() { "$VPY" -m pip install -q "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
pip_install --upgrade pip "setuptools<81" wheel

if ! "$VPY" -c "import torch, torchvision; torchvision.ops.nms" 2>/dev/null; then
  echo "[setup] installing $TORCH_PIN"
  pip_install $TORCH_PIN
fi

if ! "$VPY" -c "import detectron2" 2>/dev/null; then
  # Upstream detectron2 is not on the package registry; sal-detectron2 is a republished
  # wheel of it (tagged cp310, pure-Python use works).
  D2_DIR="$VENV/detectron2_pkg"
  echo "[setup] installing $D2_PIN into $D2_DIR"
  pip_install --no-deps --only-binary=:all: --python-version 3.10 \
    --implementation cp --target "$D2_DIR" "$D2_PIN"
  SITE="$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  echo "$D2_DIR" > "$SITE/hkd_detectron2.pth"
  pip_install black  # detectron2 needs it to dump lazy configs
fi

echo "[setup] installing hkd_d2 (editable) with test and deploy extras"
pip_install -e "$ROOT[test,deploy]"
"$VPY" -c "import detectron2, torchvision, hkd_d2, onnx, onnxruntime"
touch "$STAMP"
echo "[setup] done"
