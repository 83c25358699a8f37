# Sourced by scripts/test and scripts/reproduce: makes (once) and enters a local virtual
# environment with the CPU build of PyTorch and memdistill (editable, with the dev tools).
# Idempotent: a stamp records what was installed; set-up reruns only when pyproject.toml,
# setup.py or the torch requirement change. MEMDISTILL_VENV and MEMDISTILL_TORCH override the
# folder (default .venv) and the torch requirement (default the pinned CPU build).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${MEMDISTILL_VENV:-$root/.venv}"
torch_requirement="${MEMDISTILL_TORCH:-torch==2.13.0}"  # pinned first: an unpinned torch pulls the multi-GB CUDA build
stamp="$venv/.memdistill-setup"
wanted="$(cat "$root/pyproject.toml" "$root/setup.py" | sha256sum | cut -c1-16) $torch_requirement"
if [[ ! -x "$venv/bin/python" ]]; then
  echo "memdistill: making the virtual environment $venv" >&2
  python3 -m venv "$venv"
fi
if [[ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]]; then
  echo "memdistill: installing $torch_requirement and memdistill[dev] into $venv (once)" >&2
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet "$torch_requirement" "setuptools>=68" wheel
  "$venv/bin/python" -m pip install --quiet --no-build-isolation -e "$root[dev]"
  echo "$wanted" > "$stamp"
fi
export PATH="$venv/bin:$PATH"
cd "$root"
