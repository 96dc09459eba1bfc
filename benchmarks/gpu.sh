#!/usr/bin/env bash
# GPU checks and figures in one go, for a machine with a CUDA GPU and PyTorch on it:
#   bash benchmarks/gpu.sh DATA_DIR OUT_DIR
# DATA_DIR holds ADBench's 10_cover.npz (../shared/data/adbench here); results land in OUT_DIR.
set -uo pipefail
data=${1:?DATA_DIR}
out=${2:?OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, pandas, numpy; print('torch', torch.__version__, 'pandas', pandas.__version__, 'numpy', numpy.__version__)" | tee -a "$out/gpu.txt"
# GPU-only tests (CI skips them): CUDA-graph training, GPU-trained models on CPU, row independence
timeout 150 python3 -m pytest --noconftest -p no:cacheprovider -q -rA -s tests/test_gpu.py 2>&1 | tee "$out/gpu_tests.txt" | tail -25
# Issue 2's GPU figures: cover tiled to 1M rows, ours and PyOD's AutoEncoder side by side
timeout 150 python3 -m benchmarks.throughput --data "$data" --device cuda --rows 1000000 \
    --peer-rows 5000 2>&1 | tee "$out/throughput.md"
# Issue 5's GPU figures: windows/s and images/s, training and scoring
timeout 200 python3 -m benchmarks.modalities --device cuda --series 4 --points 200000 \
    --images 60000 --epochs 5 2>&1 | tee "$out/modalities.md"
# Issue 2's batch CSV figures on this machine's cores, then with the model's pass on the GPU
timeout 150 python3 -m benchmarks.batch_csv --rss-rows --work /tmp/bb --keep 2>&1 \
    | tee "$out/batch_cpu.md"
timeout 120 python3 -m benchmarks.batch_csv --rss-rows --work /tmp/bb --device cuda 2>&1 \
    | tee "$out/batch_cuda.md"
# Data-parallel training (torchrun, NCCL) against one GPU, where the machine has several
gpus=$(nvidia-smi -L | wc -l)
if [ "$gpus" -ge 2 ]; then
    timeout 300 python3 -m benchmarks.data_parallel --data "$data" --device cuda \
        --processes "$gpus" --rows 300000 2>&1 | tee "$out/data_parallel.md"
fi
