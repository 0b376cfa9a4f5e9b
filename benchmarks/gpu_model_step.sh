#!/usr/bin/env bash
# GPU check of the model step (benchmarks/model_step.py) at catalog shapes; JSON lines into $OUT (default .).
OUT=${OUT:-.}
python -c "import torch;print(torch.__version__, torch.cuda.get_device_name(0))"
C="--steps 3 --warmup 1"
run() { timeout 100 python benchmarks/model_step.py --device cuda $C "$@" >> $OUT/model_step.jsonl 2>> $OUT/err.log || echo "FAILED $*" >> $OUT/model_step.jsonl; }
run --batch 8192 --dims 64,32 --embedding-dim 32 --club-steps 5 --fanouts 5,5 --knn-fanout 5 --users 2000000 --items 200000 --unique-share 0.3
run --batch 8192 --dims 4096,384 --club-steps 50 --fanouts 10,10 --unique-share 0.3
run --batch 8192 --dims 4096,384 --club-steps 50 --fanouts 10,10 --unique-share 0.6
run --batch 8192 --dims 4096,384 --club-steps 5 --fanouts 10,10 --unique-share 0.3
run --batch 16384 --dims 4096,384 --club-steps 50 --fanouts 5,5 --knn-fanout 5 --unique-share 0.3
run --batch 2048 --dims 4096,384 --club-steps 50 --fanouts 10,10 --unique-share 0.3
cat $OUT/model_step.jsonl; tail -5 $OUT/err.log
