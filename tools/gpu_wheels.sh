#!/usr/bin/env bash
# Wheels of the packages WorldSim needs that the lent GPU machine's image lacks (it has torch, triton, numpy,
# numba, safetensors, pillow, rich, tqdm, pyyaml, cloudpickle; Python 3.12, x86-64, no network), into .whl/
# (ignored by git), to be carried there. On that machine:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# then run the benchmarks from the repository root: python3 -m worldsim.benchmarks --minutes 9 --out $OUT/bench
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d .whl av==19.0.2 pygame-ce==2.5.8
python3 -m pip download -q --no-deps --only-binary=:all: -d .whl \
    gymnasium==1.4.0 farama-notifications==0.0.6 hydra-core==1.3.8 omegaconf==2.3.1
# hydra's parser runtime is published as a source distribution only: build its (pure Python) wheel here
python3 -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3
ls -l .whl
du -sh .whl
