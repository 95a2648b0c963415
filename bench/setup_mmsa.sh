#!/usr/bin/env bash
# Create bench/.mmsa-venv with MMSA 2.2.1 (the peer implementation of MFM) on CPU torch.
# Usage: bash bench/setup_mmsa.sh [VENV_DIR]
# Exit 0 when `import MMSA` works in the venv; the benchmark calls this when the venv is missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${1:-$here/.mmsa-venv}"
python="${MMSA_BASE_PYTHON:-python3}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import MMSA" >/dev/null 2>&1; then
    echo "MMSA venv ready: $venv"
    exit 0
fi
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "torch==2.13.0"
"$venv/bin/python" -m pip install --quiet "MMSA==2.2.1"
"$venv/bin/python" -c "import MMSA, torch; print('MMSA venv ready:', '$venv', 'torch', torch.__version__)"
