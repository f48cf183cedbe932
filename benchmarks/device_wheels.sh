#!/usr/bin/env bash
# Wheels for benchmarks/device_run.sh, into .whl/ (ignored by git): tilegraph itself and
# the dependencies the GPU image lacks, at the versions of this environment, for
# CPython 3.12 on x86-64 Linux. Ray is left out (its wheel alone is over the 64 MiB a
# device call may carry), so the GPU machine runs the Dask paths only. diffusers and its
# hub client ride along for picard's torch tests (not yet run on a device).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
rm -f .whl/tilegraph-*.whl
names="dask distributed donfig google-crc32c locket numcodecs partd pyamg pydantic
pydantic_core tblib tornado xarray zarr zict array-api-compat annotated-types
typing-inspection typing_extensions dask-cuda diffusers huggingface-hub safetensors
hf-xet httpx2 httpcore2 truststore anyio idna h11"
pins=$(for n in $names; do pip show "$n" 2>/dev/null | awk -v n="$n" '/^Version:/{print n"=="$2}' || true; done)
pins="$pins $(echo "$names" | tr ' ' '\n' | grep -x dask-cuda || true)"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d .whl $pins
python3 -m pip wheel -q --no-deps -w .whl .
du -sh .whl
