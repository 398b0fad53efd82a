#!/usr/bin/env bash
# Every GPU figure in one run (device time is scarce): the UniRL step and the rollout benchmark on
# a random-init Janus-Pro-1B-shaped model in bf16. Writes logs under ${OUT:-bench-gpu}.
# Usage, from the repository root on a CUDA machine: bash bench/gpu.sh
set -u
out=${OUT:-bench-gpu}; mkdir -p "$out"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
python3 - <<'PY' 2>&1 | tee "$out/env.log"
import torch, transformers
print(torch.__version__, transformers.__version__, torch.cuda.get_device_name(), torch.cuda.get_device_properties(0).total_memory / 2**30, "GiB")
PY
# Issue 6: one GRPO step (the second of two; the first warms up), group 8, 4 prompts, full fine-tuning.
timeout 300 python3 -m bench.step --config configs/unirl/janus_pro_1b_grpo.yaml --model janus-pro-1b-shape \
  --steps 2 prompts=shapes:train 2>&1 | grep -v "it/s\]" | tee "$out/step.log"
# Issue 10: 16 prompts x 8 images, guidance 5, 576 tokens: ours, transformers', the bandwidth floor.
timeout 300 python3 -m bench.rollout --model janus-pro-1b-shape --prompts 16 --samples 8 --guidance 5 \
  --repeats 2 2>&1 | grep -v "it/s\]" | tee "$out/rollout.log"
