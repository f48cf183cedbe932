#!/usr/bin/env bash
# The GPU and many-core checks of issue 21, for a machine with an NVIDIA GPU and 16 cores
# whose Python has CuPy but not tilegraph's dependencies (DEVELOPERS' GPU image).
#
#   benchmarks/device_wheels.sh            # here, once: the wheels into .whl/
#   bash benchmarks/device_run.sh gpu      # there: pytest -m gpu, gpu_check, kernels, picard
#   bash benchmarks/device_run.sh scaling  # there: 1, 2, 4, 8 CPU workers
#   bash benchmarks/device_run.sh next     # there: only what the open issues still lack
#                                          # (<= 9.5 min: torch on the GPU, a diffusers UNet
#                                          # sampled on the GPU, ttn scaling, domain-split
#                                          # 1023^2 on CPU and CuPy)
#   bash benchmarks/device_run.sh next2    # there: picard's guarded GMM rows and the
#                                          # kernels (~3.5 min)
#
# A session's device time is 15 minutes, the machine's start included: `next` is the
# one call that fits; `next2` only if a later session gets a machine again.
#
# Every step runs under its own time limit; its log and the JSON it writes are packed
# into $OUT/device-<part>.tar.gz after each step, so a run cut short still returns what
# it measured. Steps are independent: a failing one does not stop the next.
set -u
PART=${1:-gpu}
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT" benchmarks/results
LOGS=$(mktemp -d)
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

if [ -d .whl ] && [ -z "${NO_WHEELS:-}" ]; then  # tilegraph and the dependencies the image lacks, no index
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site PATH=/tmp/site/bin:$PATH
fi

pack() {
    cp benchmarks/results/*.json "$LOGS"/ 2>/dev/null
    tar -czf "$OUT/device-$PART.tar.gz" -C "$LOGS" .
}

step() {  # step NAME LIMIT_S COMMAND...: run, log, report
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s) $(date +%T)"
    local t0=$SECONDS
    timeout -k 5 "$limit" "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    echo "== $name: rc=$rc in $((SECONDS - t0)) s"
    tail -n "${TAIL:-25}" "$LOGS/$name.log"
    pack
}

case $PART in
gpu)
    step env 60 bash -c 'nvidia-smi -L; nproc; free -g | head -2; python3 -c "
import cupy, numpy, dask, distributed, zarr, xarray, tilegraph
print(\"cupy\", cupy.__version__, \"numpy\", numpy.__version__, \"dask\", dask.__version__,
      \"zarr\", zarr.__version__, \"xarray\", xarray.__version__,
      \"gpus\", cupy.cuda.runtime.getDeviceCount())"'
    TAIL=40 step pytest-gpu 170 python3 -m pytest -m gpu tests/test_gpu.py -p no:cacheprovider \
        -o addopts= -q -rA --timeout 150
    step gpu-kernels 90 python3 benchmarks/gpu_kernels.py
    step picard-gpu 100 python3 benchmarks/picard.py --skip-counts --skip-learned \
        --device cuda --wall-workers 1 --windows 8 32
    step gpu-check 120 python3 benchmarks/gpu_check.py
    ;;
scaling)
    TAIL=20 step scaling "${SCALING_LIMIT:-330}" python3 benchmarks/scaling.py \
        --workers 1 2 4 8 --rounds "${ROUNDS:-3}"
    ;;
next)  # 2026-12-07: the rows issues 17, 19 and 21 still lack, most wanted first (step limits 500 s, with the wheels' install and the kill grace under 600 s)
    step env 20 bash -c 'nvidia-smi -L; nproc; python3 -c "import cupy, torch, huggingface_hub, diffusers, tilegraph; print(cupy.__version__, torch.__version__, diffusers.__version__)"'
    # 17: domain-split 1023^2 on CPU and CuPy now that work vectors stay on the device
    # (the JSON is written after each run: a step cut short keeps the CPU row)
    step domain-split-gpu 120 python3 benchmarks/gpu_check.py --pipelines domain-split \
        --set n_fine=1024 --set n_coarse=auto --set problem.kind=variable --set tol=1e-8 \
        --set direct_reference=false
    # 19: torch networks on the GPU (DLPack, a diffusers directory with device=cuda)
    TAIL=30 step pytest-torch-gpu 100 python3 -m pytest -m gpu tests/test_gpu.py \
        -k "torch or diffusers or latents" -p no:cacheprovider -o addopts= -q -rA --timeout 85
    # 19: a diffusers UNet on the GPU: sequential, diffusers' ParaDiGMS loop, tilegraph's
    # samplers in one process, then the pipeline on local-cuda (window and batch)
    TAIL=30 step picard-diffusers-gpu 130 python3 benchmarks/picard.py --skip-counts \
        --skip-learned --skip-wall --diffusers --device cuda --unet-size 32 \
        --unet-steps 1000 --unet-samples 4 --windows 32 96
    TAIL=20 step scaling-ttn 130 python3 benchmarks/scaling.py --workers 1 2 4 8 \
        --rounds 2 --cases ttn-paper,ttn-d64  # 21: subtree_depth = ceil(log2 W)
    ;;
next2)  # what `next` leaves out (~3.5 min): picard's guarded GMM rows on the GPU (19);
    # the kernels (17: the current frozen box solves)
    step picard-gpu 120 python3 benchmarks/picard.py --skip-counts --skip-learned \
        --device cuda --wall-workers 1 --windows 8 32
    step gpu-kernels 80 python3 benchmarks/gpu_kernels.py
    ;;
*)
    echo "usage: device_run.sh gpu|scaling|next|next2" >&2
    exit 2
    ;;
esac
ls -la "$OUT"
