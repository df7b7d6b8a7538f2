#!/usr/bin/env bash
# Train DeiT with MaxSup. Run with bash (not python):  bash Deit/train_with_MaxSup.sh [extra main.py flags]
#
# With DATA_PATH set: the paper's Table 5 recipe (§5.1) through torchrun on NPROC processes: DeiT-S/16, 300 epochs,
# total batch 1024, AdamW lr 5e-4 x batch/512, wd 0.05, cosine with 5 warm-up epochs, drop-path 0.1, RandAugment,
# random erasing 0.25, EMA, no Mixup/CutMix, --smoothing 0, --loss maxsup (α 0.1 → 0.2).
#   DATA_PATH=/data/imagenet NPROC=4 bash Deit/train_with_MaxSup.sh            # ImageFolder train/ val/
#   DATA_PATH=/data/imagenet-zip NPROC=4 bash Deit/train_with_MaxSup.sh --cache # authors' zip cache
#   MIXUP=1 ...   the authors' launcher variant: DeiT's default Mixup 0.8 / CutMix 1.0 stay on (paper Figs. 3/4)
#
# Without DATA_PATH: the embedded default, a tiny ViT on Fashion-MNIST source classes 0,2,4,6,8 (a few minutes on
# 2 CPU cores), printing the final acc@1/NLL/ECE and the per-epoch α / MaxSup-penalty log.
# Extra arguments are passed to main.py last, so they override the recipe (e.g. --loss ls, --epochs 2).
# --print-config prints the resolved recipe as JSON and exits (no data read); SEEDS=3 or --seeds 0,3,7 runs a seed
# sweep, one run folder <OUTPUT_DIR>/seed<S> per seed. Fewer GPUs, same global batch 1024: NPROC=2 ACCUM=2 gives
# 2 processes x 256 images x 2 accumulation steps (the per-process batch is 1024 / NPROC / ACCUM).
#
# Environment (all optional):
#   DATA_PATH        ImageNet (ImageFolder train/ val/, or the zip cache with --cache); unset: the Fashion-MNIST default
#   NPROC, ACCUM     processes (default 4) and accumulation steps (default 1) of the ImageNet recipe
#   MIXUP            1: keep DeiT's Mixup 0.8 / CutMix 1.0 (the authors' launcher); default 0
#   OUTPUT_DIR       the run folder (default ./output/deit_small_maxsup, or ./output/deit_fmnist_maxsup without
#                    DATA_PATH); --output_dir among the extra arguments overrides it
#   PYTHON           the interpreter (default: the repository's .venv/bin/python when it exists and no virtualenv is
#                    active, i.e. VIRTUAL_ENV is unset; otherwise python3 from the PATH)
#   OMP_NUM_THREADS  threads of the Fashion-MNIST default (default 1)
#   SEEDS            read by main.py: a seed sweep (see above)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ -z "${PYTHON:-}" ] && [ -x "$HERE/../.venv/bin/python" ] && [ -z "${VIRTUAL_ENV:-}" ]; then
    PYTHON="$HERE/../.venv/bin/python"
fi
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"

if [ -n "${DATA_PATH:-}" ]; then
    NPROC="${NPROC:-4}"
    ACCUM="${ACCUM:-1}"
    PER_GPU_BATCH=$((1024 / NPROC / ACCUM))
    OUTPUT_DIR="${OUTPUT_DIR:-./output/deit_small_maxsup}"
    MIX=(--mixup 0 --cutmix 0)
    if [ "${MIXUP:-0}" = "1" ]; then MIX=(--mixup 0.8 --cutmix 1.0); fi
    LAUNCH=("$PYTHON" -m torch.distributed.run --nproc_per_node="$NPROC")
    # --print-config reads no data and starts no process group: one process, told the world size torchrun would set
    for arg in "$@"; do
        if [ "$arg" = "--print-config" ]; then LAUNCH=(env WORLD_SIZE="$NPROC" "$PYTHON"); fi
    done
    exec "${LAUNCH[@]}" "$HERE/main.py" \
        --model deit_small_patch16_224 --input-size 224 --data-set IMNET --data-path "$DATA_PATH" \
        --batch-size "$PER_GPU_BATCH" --accum-steps "$ACCUM" --epochs 300 --lr 5e-4 --opt adamw --weight-decay 0.05 \
        --sched cosine --warmup-epochs 5 --warmup-lr 1e-6 --min-lr 1e-5 --drop-path 0.1 \
        --aa rand-m9-mstd0.5-inc1 --reprob 0.25 --eval-crop-ratio 0.875 --model-ema --model-ema-decay 0.99996 \
        "${MIX[@]}" --smoothing 0 --loss maxsup \
        --dist-eval --num_workers 10 --seed 0 --output_dir "$OUTPUT_DIR" "$@"
fi

echo "DATA_PATH is not set: running the embedded default (tiny ViT, MaxSup, Fashion-MNIST classes 0,2,4,6,8, CPU)."
OUTPUT_DIR="${OUTPUT_DIR:-./output/deit_fmnist_maxsup}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # the DataLoader worker uses the other core
exec "$PYTHON" "$HERE/main.py" \
    --data-set FMNIST --classes 0,2,4,6,8 --model vit_tiny_patch16_224 --input-size 28 \
    --model-kwargs patch_size=7 embed_dim=64 depth=2 num_heads=2 \
    --batch-size 128 --epochs 5 --lr 2e-3 --unscale-lr --opt adamw --weight-decay 0.05 \
    --sched cosine --warmup-epochs 0 --min-lr 1e-5 --drop-path 0.0 \
    --aa none --reprob 0 --color-jitter 0 --eval-crop-ratio 1.0 --no-model-ema \
    --mixup 0 --cutmix 0 --smoothing 0 --loss maxsup \
    --device cpu --num_workers 1 --print-freq 50 --seed 0 --output_dir "$OUTPUT_DIR" "$@"
