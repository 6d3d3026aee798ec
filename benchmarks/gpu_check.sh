#!/usr/bin/env bash
# Everything that needs a GPU, in one go (device time is scarce): the CUDA tests, then what the flags ask for.
#
#     bash benchmarks/gpu_check.sh [--bench] [--mfu] [--seed-set STEPS] [--vae EPOCHS]   # logs to $OUT
#
#   --bench           the backbone and autoencoder step benchmarks (bench_backbones.py, bench_autoencoder.py)
#   --mfu             DiT-XL/2 and the SD-1.x UNet training step at 32×32×4: bf16, fused AdamW, eager and
#                     torch.compile, MFU against the card's peak (bench_mfu.py)
#   --seed-set STEPS  the seed's own setting: the simulated full set (31 users × 150 at 256×256), the seed-preset
#                     autoencoder for STEPS steps, a DiT-S/2 (--preset small) for ≤ 2 minutes on its latents, then
#                     evaluate.py: reconstruction PSNR and identity, condition accuracy, FD
#   --vae EPOCHS      a longer stage-1 run on the tiny simulated set whose weights come back in $OUT
#
# (default $OUT: runs/gpu_check). For a dry run of the glue on a CPU: DEVICE=cpu PER_USER=4 (and small STEPS).
# Uses whatever python3 holds a CUDA build of torch; needs einops, tqdm, pillow, numpy and pytest.
set -u
OUT=${OUT:-runs/gpu_check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # tinyldm without pip install
VAE_EPOCHS=0 BENCH=0 MFU=0 SEED_STEPS=0 DEVICE=${DEVICE:-cuda} PER_USER=${PER_USER:-150}
while [ $# -gt 0 ]; do
  case "$1" in
    --bench) BENCH=1 ;;
    --mfu) MFU=1 ;;
    --seed-set) SEED_STEPS=${2:?--seed-set needs a number of steps}; shift ;;
    --vae) VAE_EPOCHS=${2:?--vae needs a number of epochs}; shift ;;
    *) echo "gpu_check.sh: unknown option $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
  shift
done
start=$(date +%s)
stamp() { echo "== $1 ($(( $(date +%s) - start )) s) =="; }

stamp "environment" | tee "$OUT/env.txt"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$OUT/env.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" 2>&1 | tee -a "$OUT/env.txt"

mkdir -p runs
seed_data=data/microdoppler-v1-seed
[ "$PER_USER" = 150 ] || seed_data=runs/microdoppler-seed-$PER_USER  # a dry run's smaller set
if [ "$SEED_STEPS" -gt 0 ]; then  # generate the full set on the CPUs while the GPU runs the tests
  python3 -m tinyldm.data.microdoppler --out "$seed_data" --users 31 --per-user "$PER_USER" --size 256 \
    --workers 8 > runs/seed_data.txt 2>&1 &
  data_pid=$!
fi

stamp "CUDA tests"
timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$OUT/tests.txt"

if [ "$BENCH" = 1 ]; then
stamp "benchmarks"
{
  python3 benchmarks/bench_backbones.py --device cuda --bf16 --big --batch-size 32
  python3 benchmarks/bench_backbones.py --device cuda --big --batch-size 32
  python3 benchmarks/bench_backbones.py --device cuda --bf16 --batch-size 64
  python3 benchmarks/bench_autoencoder.py --device cuda --preset seed --batch-size 4
  python3 benchmarks/bench_autoencoder.py --device cuda --preset tiny --batch-size 16
} 2>&1 | tee "$OUT/bench.txt"
fi

if [ "$MFU" = 1 ]; then
  stamp "MFU: DiT-XL/2 and the SD-1.x UNet, one training step"
  {
    timeout 100 python3 benchmarks/bench_mfu.py --model dit-xl --batch-size 256 --compile
    timeout 120 python3 benchmarks/bench_mfu.py --model sd-unet --batch-size 128 --channels-last --compile
  } 2>&1 | grep -v "Warning\|warn(" | tee "$OUT/mfu.txt"
fi

if [ "$SEED_STEPS" -gt 0 ]; then
  wait "$data_pid"
  { stamp "seed setting: 256×256 data ready"; tail -2 runs/seed_data.txt
    echo "the seed-preset autoencoder, $SEED_STEPS steps"
    timeout 120 python3 train_vae.py --preset seed --data "$seed_data" --out runs/seed-vae --max-steps "$SEED_STEPS" \
      --device "$DEVICE" --num-workers 6
  } 2>&1 | tr '\r' '\n' | grep -v "%|" | tee "$OUT/seed_vae.txt"
  stamp "seed setting: DiT-S/2 (--preset small) on its latents, ≤ 66 s of training"
  timeout 100 python3 train_ldm.py --backbone dit --preset small --vae runs/seed-vae --out runs/seed-dit \
    --epochs 25 --max-minutes 1.1 --device "$DEVICE" 2>&1 | tr '\r' '\n' | grep -v "%|" | tee "$OUT/seed_dit.txt"
  stamp "seed setting: evaluation"
  timeout 90 python3 evaluate.py --run runs/seed-dit --device "$DEVICE" 2>&1 | tr '\r' '\n' | grep -v "%|" \
    | tee "$OUT/seed_eval.txt"
  cp runs/seed-dit/eval/report.md "$OUT/seed_report.md" 2>/dev/null
  cp runs/seed-vae/recon_latest.png "$OUT/seed_recon.png" 2>/dev/null
fi

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
