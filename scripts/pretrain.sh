#!/usr/bin/env bash
# Launch scripts/pretrain.py in the four ways the course uses. Run from the repository root:
#
#   bash scripts/pretrain.sh cpu          # one process on CPU, tiny model, ~1 minute
#   bash scripts/pretrain.sh torchrun     # 2 processes, DDP (gloo on CPU, nccl on GPUs)
#   bash scripts/pretrain.sh accelerate   # the same through `accelerate launch`
#   bash scripts/pretrain.sh deepspeed    # DeepSpeed ZeRO-2 on 2 GPUs (ZeRO=3 for ZeRO-3)
#   bash scripts/pretrain.sh deepspeed-cpu  # DeepSpeed ZeRO-2 in one CPU process (first run compiles ops, ~80 s)
#
# Variables: NGPUS (default 2), MODEL_CONFIG (default tiny; e.g. Qwen/Qwen2.5-0.5B needs a network or a local
# folder, and export HF_HUB_OFFLINE=0 to download), OUT (output folder), ZERO (2 or 3), MAX_STEPS.
#
# What the seed lecture got wrong in its launch script, fixed here:
#  * `CUDA_VISIBLE_DEVICES=0,1` alone on a line sets a shell variable that is NOT exported, so the deepspeed
#    launcher never sees it. Either `export CUDA_VISIBLE_DEVICES=0,1` or, better, tell the launcher:
#    `deepspeed --include localhost:0,1 ...` or `deepspeed --num_gpus 2 ...`.
#  * `--evaluation_strategy` and `--logging_dir` no longer exist in transformers 5: use `--eval_strategy`, and
#    TENSORBOARD_LOGGING_DIR for the TensorBoard folder. `--gradient_checkpointing` still works but is a deprecated
#    alias of `--activation_checkpointing`.
#  * `--bf16` only on GPUs that support it (Ampere or newer: A100, H100, RTX 30xx/40xx); a T4 or V100 needs `--fp16`.
#    With "auto" in the DeepSpeed config, DeepSpeed follows whichever of the two flags is given.
#  * `--report_to swanlab` needs `pip install swanlab` (not in this project's pins); `tensorboard` works offline.
#  * the seed's DeepSpeed config used the WarmupLR scheduler: warm-up, then a CONSTANT learning rate, whatever
#    --lr_scheduler_type says. Our configs have no "scheduler" block, so Trainer's cosine schedule applies.
set -euo pipefail
cd "$(dirname "$0")/.."

MODE="${1:-cpu}"
NGPUS="${NGPUS:-2}"
ZERO="${ZERO:-2}"
MODEL_CONFIG="${MODEL_CONFIG:-tiny}"
OUT="${OUT:-runs/pretrain_${MODE}}"
MAX_STEPS="${MAX_STEPS:-200}"
PY="${PY:-python}"
[ -x .venv/bin/python ] && PY=.venv/bin/python

# Arguments shared by every launcher (the seed's, scaled to the tiny model; see notebook 05 for each one).
COMMON=(
  --config_name "${MODEL_CONFIG}"
  --train_files data_samples/pretrain_corpus.jsonl
  --block_size 128
  --per_device_train_batch_size 16
  --gradient_accumulation_steps 1
  --learning_rate 3e-3
  --lr_scheduler_type cosine
  --warmup_steps 20
  --weight_decay 0.1
  --max_grad_norm 1.0
  --max_steps "${MAX_STEPS}"
  --do_train --do_eval
  --eval_strategy no
  --logging_strategy steps --logging_steps 10
  --save_strategy steps --save_steps 100 --save_total_limit 1
  --seed 12
  --report_to tensorboard
  --disable_tqdm true
  --output_dir "${OUT}"
)
export TENSORBOARD_LOGGING_DIR="${OUT}/logs"

case "${MODE}" in
  cpu)
    OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" "${PY}" scripts/pretrain.py "${COMMON[@]}" --use_cpu
    ;;
  torchrun)
    if "${PY}" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
      "${PY}" -m torch.distributed.run --nproc_per_node "${NGPUS}" scripts/pretrain.py "${COMMON[@]}" --bf16
    else
      OMP_NUM_THREADS=1 "${PY}" -m torch.distributed.run --nproc_per_node 2 scripts/pretrain.py "${COMMON[@]}" \
        --use_cpu --ddp_backend gloo
    fi
    ;;
  accelerate)
    accelerate launch --num_processes "${NGPUS}" --mixed_precision bf16 scripts/pretrain.py "${COMMON[@]}"
    ;;
  deepspeed)
    # The seed's command, corrected. Resume with: --resume_from_checkpoint last (or a checkpoint-N folder).
    deepspeed --num_gpus "${NGPUS}" scripts/pretrain.py "${COMMON[@]}" \
      --bf16 \
      --activation_checkpointing \
      --deepspeed "configs/ds_config_zero${ZERO}.json"
    ;;
  deepspeed-cpu)
    # One process, no launcher: set the variables a launcher would set (else DeepSpeed looks for mpi4py).
    DS_ACCELERATOR=cpu RANK=0 WORLD_SIZE=1 LOCAL_RANK=0 MASTER_ADDR=127.0.0.1 MASTER_PORT="${MASTER_PORT:-29561}" \
      "${PY}" scripts/pretrain.py "${COMMON[@]}" --use_cpu --deepspeed configs/ds_config_zero2.json
    ;;
  *)
    echo "usage: $0 {cpu|torchrun|accelerate|deepspeed|deepspeed-cpu}" >&2
    exit 2
    ;;
esac
