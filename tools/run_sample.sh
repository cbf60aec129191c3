#!/usr/bin/env bash
# The README's main command: set up, build TFRecords from the shipped CIFAR-10 sample with the
# Beam job, train and evaluate `simple` on them, print results.json. No network needed.
# Outputs go under runs/sample/ (or $1).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/sample}
./setup.sh
# The commands hold TensorFlow's C++ INFO back themselves (pipeline/logs.py); 2 hides its C++
# warnings too, of which a smoke run gets one that is not news ("Input of
# GeneratorDatasetOp::Dataset will not be optimized", from tf.distribute's input).
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
.venv/bin/python -m pipeline.build_tfrecords --source=image_dir \
    --image_dir=pipeline/sample_data/cifar10 --output_dir="$out/data"
# A fresh model_dir each time: an existing one would be resumed, not retrained.
rm -rf "$out/simple"
.venv/bin/python -m trainer.main --flagfile=configs/sample.flags \
    --data_dir="$out/data" --model_dir="$out/simple"
echo "== $out/simple/results.json"
cat "$out/simple/results.json"
