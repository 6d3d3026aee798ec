#!/usr/bin/env bash
# Everything that needs a GPU, in one go (device time is scarce): the CUDA tests, the GPU benchmarks and,
# with --vae EPOCHS, a longer stage-1 run on the tiny simulated set whose weights come back in $OUT.
#
#     bash benchmarks/gpu_check.sh [--vae EPOCHS]      # writes logs to $OUT (default runs/gpu_check)
#
# Uses whatever python3 holds a CUDA build of torch; needs einops, tqdm, pillow, numpy and pytest.
set -u
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # tinyldm without pip install
VAE_EPOCHS=0
[ "${1:-}" = "--vae" ] && VAE_EPOCHS=${2:?--vae needs a number of epochs}
start=$(date +%s)
stamp() { echo "== $1 ($(( $(date +%s) - start )) s) =="; }

stamp "environment" | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$OUT/env.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$OUT/env.txt"

stamp "CUDA tests"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/tests.txt"

stamp "benchmarks"
{
  python3 benchmarks/bench_backbones.py --device cuda --bf16 --big --batch-size 32
  python3 benchmarks/bench_backbones.py --device cuda --big --batch-size 32
  python3 benchmarks/bench_backbones.py --device cuda --bf16 --batch-size 64
  python3 benchmarks/bench_autoencoder.py --device cuda --preset seed --batch-size 4
  python3 benchmarks/bench_autoencoder.py --device cuda --preset tiny --batch-size 16
} 2>&1 | tee "$OUT/bench.txt"

if [ "$VAE_EPOCHS" -gt 0 ]; then
  stamp "stage 1: tiny AutoencoderKL, $VAE_EPOCHS epochs"
  run=runs/vae-tiny-long
  timeout 360 python3 train_vae.py --preset tiny --data data/microdoppler-v1-tiny --out "$run" \
    --epochs "$VAE_EPOCHS" --lr 4e-4 --ckpt-every 2000 --device cuda 2>&1 | tr '\r' '\n' | grep -v "%|" \
    | tee "$OUT/vae.txt"
  tar czf "$OUT/vae-tiny-long.tgz" -C runs vae-tiny-long/config.json vae-tiny-long/model.safetensors \
    vae-tiny-long/log.jsonl vae-tiny-long/recon_latest.png vae-tiny-long/loss_curves.png
fi
stamp "done"
