#!/usr/bin/env bash
# The GPU benchmark in one command, for a lent machine without network access:
#
#   bash benchmarks/gpu.sh
#
# The GPU image has jax (CUDA), flax, optax, orbax, torch and no TensorFlow,
# and lacks three small pure-Python wheels clan_jax needs: ml_collections, clu
# and wrapt. Carry them in wheels/ (git-ignored; BENCHMARKS.md says how to get
# them); they are installed into a temporary folder, nothing from the network.
# Then it prints the machine and the versions, and runs, each row printed as
# it finishes (a run cut short keeps its rows):
#   - benchmarks.scaling: JAX bf16 and fp32, remat off and on, and PyTorch
#     eager and torch.compile, at 448 px, batch 32;
#   - benchmarks.attention_memory: the CLCA step's temporaries per attention path.
# All within CLAN_BENCH_BUDGET_S seconds (8 minutes). Every size can be
# overridden, for a test on a CPU at tiny sizes (tests/test_gpu_script.py):
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
BUDGET_S=${CLAN_BENCH_BUDGET_S:-480}
WHEELS=${CLAN_BENCH_WHEELS:-wheels}
ATTENTION_RESERVE_S=${CLAN_BENCH_ATTENTION_RESERVE_S:-75}
SCALING_FLAGS=(
  --size="${CLAN_BENCH_SIZE:-448}" --batch="${CLAN_BENCH_BATCH:-32}"
  --backbone="${CLAN_BENCH_BACKBONE:-resnet50}" --width="${CLAN_BENCH_WIDTH:-64}"
  --num_classes="${CLAN_BENCH_NUM_CLASSES:-200}"
  --dtypes="${CLAN_BENCH_DTYPES:-bfloat16,float32}" --remat="${CLAN_BENCH_REMAT:-none,all}"
  --steps="${CLAN_BENCH_STEPS:-10}" --warmup="${CLAN_BENCH_WARMUP:-2}"
  --torch_modes="${CLAN_BENCH_TORCH_MODES:-eager,compiled}"
  --torch_compile_backend="${CLAN_BENCH_TORCH_COMPILE_BACKEND:-inductor}"
)
ATTENTION_FLAGS=(
  --dtype=bfloat16 --sizes="${CLAN_BENCH_ATTENTION_SIZES:-28,56}"
  --batch_size="${CLAN_BENCH_ATTENTION_BATCH:-8}"
)

# JAX and PyTorch share the GPU in one process: JAX must not take 75% of it up front.
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}

shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if ((${#wheels[@]})); then
  site=$(mktemp -d)
  "$PYTHON" -m pip install --quiet --no-deps --no-index --target "$site" "${wheels[@]}" \
    || { echo "gpu.sh: could not install ${wheels[*]}" >&2; exit 1; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  echo "installed from $WHEELS: ${wheels[*]##*/}"
else
  echo "no wheels in $WHEELS/: using the installed packages"
fi

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
  || echo "no nvidia-smi"
echo "$(nproc) CPU cores, $(uname -sr)"
"$PYTHON" - <<'EOF'
import importlib.metadata
import platform

print('Python', platform.python_version())
names = ('jax', 'jaxlib', 'jax-cuda13-plugin', 'jax-cuda12-plugin', 'flax', 'optax',
         'orbax-checkpoint', 'torch', 'ml_collections', 'clu', 'wrapt')
for name in names:
  try:
    print(f'{name} {importlib.metadata.version(name)}')
  except importlib.metadata.PackageNotFoundError:
    pass
import jax
import torch
print('JAX devices:', jax.devices())
print('torch CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version(),
      'available', torch.cuda.is_available())
EOF

status=0
run() {  # run SECONDS COMMAND...: the command, cut after SECONDS
  local seconds=$1
  shift
  if ((seconds < 1)); then
    echo "gpu.sh: no time left for $*"
    status=124
    return
  fi
  timeout --kill-after=10 "$seconds" "$@"
  local rc=$?
  if ((rc == 124)); then
    echo "gpu.sh: cut after ${seconds} s (its rows above are complete): $*"
  fi
  ((status == 0)) && status=$rc
}

echo "== train step: JAX and PyTorch (budget ${BUDGET_S} s in all)"
run $((BUDGET_S - SECONDS - ATTENTION_RESERVE_S)) \
  "$PYTHON" -u -m benchmarks.scaling "${SCALING_FLAGS[@]}"
if ((status != 0 && status != 124)); then
  # benchmarks.scaling retries a step whose cuDNN attention raises; this is for
  # one that takes the process down.
  echo "gpu.sh: benchmarks.scaling failed ($status): again without cuDNN attention"
  status=0
  run $((BUDGET_S - SECONDS - ATTENTION_RESERVE_S)) \
    "$PYTHON" -u -m benchmarks.scaling "${SCALING_FLAGS[@]}" --attention_impl=blockwise
fi
echo "== CLCA attention memory"
run $((BUDGET_S - SECONDS)) "$PYTHON" -u -m benchmarks.attention_memory "${ATTENTION_FLAGS[@]}"
echo "== done in ${SECONDS} s"
exit $status
