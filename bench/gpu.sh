#!/usr/bin/env bash
# Every GPU check in one run (device time is scarce). Usage, from the repository root on a CUDA
# machine: bash bench/gpu.sh [checks] [rollout] [judge] [step] [cli] [tests]
# (checks, rollout, judge and step when none is named; 4.4 minutes on an H200 in session 10)
#   checks   tests/test_cuda.py: CUDA-graph decoding equals eager decoding and transformers
#   rollout  16 prompts x 8 images, guidance 5, 576 tokens: ours, transformers', the bandwidth floor,
#            and answers against transformers' text generate; then the shipped toy
#   judge    self-VQA judging against a per-image loop: the toy (float32), Janus-Pro-1B's shapes (bf16)
#   step     one UniRL GRPO step of a random-init Janus-Pro-1B-shaped model, bf16 (bench.step)
#   cli      the README's commands on CUDA with the shipped toy model (eval, train, jigsaw)
#   tests    the model, recipe and toy tests
# Logs go under ${OUT:-bench-gpu}.
set -u
out=${OUT:-bench-gpu}; mkdir -p "$out"
parts=${*:-checks rollout judge step}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
quiet() { grep -v -E "it/s\]|s/it\]"; }
python3 - <<'PY' 2>&1 | tee "$out/env.log"
import torch, transformers
print(torch.__version__, transformers.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).total_memory / 2**30, "GiB")
PY
if [[ " $parts " == *" checks "* ]]; then
  timeout 120 python3 -m pytest -q -p no:cacheprovider --tb=line tests/test_cuda.py 2>&1 | tail -n 30 | tee "$out/checks.log"
fi
if [[ " $parts " == *" rollout "* ]]; then
  timeout 200 python3 -m bench.rollout --model janus-pro-1b-shape --prompts 16 --samples 8 --guidance 5 \
    --repeats 2 2>&1 | quiet | tee "$out/rollout.log"
  timeout 60 python3 -m bench.rollout --model toy --prompts 16 --samples 4 --guidance 3 --repeats 3 2>&1 | quiet \
    | tee -a "$out/rollout.log"
fi
if [[ " $parts " == *" judge "* ]]; then
  timeout 60 python3 -m bench.judge --model toy --dtype float32 2>&1 | quiet | tee "$out/judge.log"
  timeout 90 python3 -m bench.judge --model janus-pro-1b-shape --images 64 --repeats 2 2>&1 | quiet \
    | tee -a "$out/judge.log"
fi
if [[ " $parts " == *" step "* ]]; then
  timeout 140 python3 -m bench.step --config configs/unirl/janus_pro_1b_grpo.yaml --model janus-pro-1b-shape \
    --steps 2 prompts=shapes:train 2>&1 | quiet | tee "$out/step.log"
fi
if [[ " $parts " == *" cli "* ]]; then
  unirl() { python3 -m unirl.cli "$@"; }
  run=$(mktemp -d)
  {
    unirl eval geneval --model toy --prompts shapes:heldout --detector shapes --samples 4 --out "$run/geneval" --json
    unirl eval understanding --model toy --out "$run/und"
    unirl train configs/unirl/toy_grpo.yaml --out "$run/unirl" --max-steps 3
    unirl eval understanding --model "$run/unirl/checkpoints/final" --scenes 50 --out "$run/und-after"
    unirl eval jigsaw --model toy --modality image --grid 2x2 --puzzles 50 --out "$run/jigsaw"
    unirl train configs/jigsaw/toy_image.yaml --out "$run/jigsaw-train" --max-steps 3
    python3 -m bench.rollout --model toy --prompts 16 --samples 4 --guidance 3 --repeats 2
  } 2>&1 | quiet | tee "$out/cli.log"
  cp "$run"/*/summary.json "$out/" 2>/dev/null
  for f in "$run"/*/summary.json; do echo "$f"; head -c 400 "$f"; echo; done | tee -a "$out/cli.log"
fi
if [[ " $parts " == *" tests "* ]]; then
  timeout 300 python3 -m pytest -q -p no:cacheprovider tests/test_janus.py tests/test_model_contract.py \
    tests/test_unirl.py tests/test_toy.py tests/test_jigsaw_recipe.py 2>&1 | tail -n 40 | tee "$out/tests.log"
fi
