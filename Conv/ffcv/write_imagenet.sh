#!/usr/bin/env bash
# Write ImageNet train/val .beton files: ./write_imagenet.sh 500 0.50 90   (the authors' setting; ffcv-imagenet's
# README uses the same for ResNet-50 and 400 0.10 90 for ResNet-18).
# Environment:
#   IMAGENET_DIR  (required) the folder holding the train/ and val/ ImageFolder splits
#   WRITE_DIR     (required) where {train,val}_<MAX_RESOLUTION>_<COMPRESS_PROBABILITY>_<JPEG_QUALITY>.ffcv are written
#   NUM_WORKERS   writer processes per split (default 16)
#   PYTHON        the interpreter (default: the repository's .venv/bin/python when it exists and no virtualenv is
#                 active (VIRTUAL_ENV unset), as Deit/train_with_MaxSup.sh does; otherwise python3 from the PATH)
set -euo pipefail
if [[ $# -ne 3 ]]; then
  echo "usage: IMAGENET_DIR=... WRITE_DIR=... $0 MAX_RESOLUTION COMPRESS_PROBABILITY JPEG_QUALITY" >&2
  exit 2
fi
: "${IMAGENET_DIR:?set IMAGENET_DIR to the folder holding the train/ and val/ ImageFolder splits}"
: "${WRITE_DIR:?set WRITE_DIR to the output folder for the .beton files}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
python="${PYTHON:-$(command -v python3 || command -v python)}"
if [[ -z "${PYTHON:-}" && -x "$here/../../.venv/bin/python" && -z "${VIRTUAL_ENV:-}" ]]; then
  python="$here/../../.venv/bin/python"
fi
for split in train val; do
  "$python" "$here/write_imagenet.py" --data-dir "$IMAGENET_DIR/$split" \
    --write-path "$WRITE_DIR/${split}_$1_$2_$3.ffcv" \
    --max-resolution "$1" --compress-probability "$2" --jpeg-quality "$3" --num-workers "${NUM_WORKERS:-16}"
done
