#!/usr/bin/env bash
# One-command set-up: a virtual environment in .venv with llmhdr_basicsr (editable), BasicSR 1.4.2 and test tools.
#
# basicsr 1.4.2 is an sdist whose setup.py asks for torch at build time; pip's isolated build would install a second
# multi-GB torch just to build a 215 kB pure-Python wheel. Building it without isolation needs only setuptools>=77.
# Usage: bash scripts/setup_env.sh [VENV_DIR]   (default .venv; PYTHON=python3.11 to choose the interpreter)
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${1:-.venv}"
python="${PYTHON:-python3}"
"$python" -c 'import sys; assert (3, 10) <= sys.version_info[:2] <= (3, 12), "Python 3.10-3.12 needed (basicsr 1.4.2 cannot be built on 3.13)"'
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q "setuptools>=77,<90" wheel
"${pip[@]}" install -q --no-build-isolation --no-deps basicsr==1.4.2
"${pip[@]}" install -q --no-build-isolation -e ".[test]"
"$venv/bin/python" -c 'import basicsr, llmhdr_basicsr, torch; print(f"llmhdr_basicsr {llmhdr_basicsr.__version__}, basicsr {basicsr.__version__}, torch {torch.__version__}: ready")'
