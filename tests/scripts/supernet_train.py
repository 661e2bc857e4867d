"""Run by tests (alone, or under `accelerate launch` with 2 CPU processes): train a tiny supernet.

Usage: supernet_train.py OUTPUT_DIR RESULT_PATH MODE, MODE one of
  run      train 6 steps (checkpoint every 3), write the supernet's weights to RESULT_PATH (safetensors);
  hang     as run, but after the first checkpoint write RESULT_PATH.saved and sleep (to be killed with -9);
  resume   as run, resuming from the last checkpoint in OUTPUT_DIR;
  ranks    2 processes, a different supernet initialisation per rank; rank 0 writes RESULT_PATH (JSON) with
           the largest difference between the ranks' weights after training;
  flash    as ranks, with flash distillation (2 steps per block) instead of the sandwich's regular KD.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from transformers import BertForSequenceClassification, TrainerCallback, TrainingArguments  # noqa: E402

from autodistill_trainer.supernet.extract import build_supernet  # noqa: E402
from autodistill_trainer.supernet.flash import train_supernet_flash  # noqa: E402
from autodistill_trainer.supernet.training import train_supernet  # noqa: E402
from helpers import pad_collator, tiny_bert_config, token_dataset  # noqa: E402
from supernet_helpers import tiny_space  # noqa: E402

torch.set_num_threads(1)
STEPS = 6


class HangAfterFirstSave(TrainerCallback):
    def __init__(self, marker: str):
        self.marker = marker

    def on_save(self, args, state, control, **kwargs):
        with open(self.marker, "w") as f:
            f.write(str(state.global_step))
        time.sleep(600)


def main(output_dir: str, result_path: str, mode: str) -> None:
    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config(hidden_dropout_prob=0.0)).eval()
    space = tiny_space()
    args = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=4, learning_rate=3e-3, logging_steps=1, report_to=[],
        save_strategy="steps", save_steps=3, disable_tqdm=True, seed=0, use_cpu=True,
    )
    distributed = mode in ("ranks", "flash")
    supernet = build_supernet(space, seed=100 + rank) if distributed else None  # DDP must broadcast rank 0's
    callbacks = [HangAfterFirstSave(result_path + ".saved")] if mode == "hang" else []
    if mode == "flash":
        result = train_supernet_flash(space, teacher, args, token_dataset(40), pad_collator, steps_per_block=2,
                                      supernet=supernet, init_embeddings_from_teacher=False)
    else:
        result = train_supernet(space, teacher, args, token_dataset(40), pad_collator, steps=STEPS, num_random=2,
                                supernet=supernet, callbacks=callbacks, resume_from_checkpoint=mode == "resume" or None,
                                init_embeddings_from_teacher=not distributed)
    weights = {k: v.contiguous() for k, v in result.supernet.state_dict().items()}
    if not distributed:
        save_file(weights, result_path)
        return
    import torch.distributed as dist

    flat = torch.cat([v.flatten().float() for v in weights.values()])
    gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    if rank == 0:
        initial = torch.cat([v.flatten().float() for v in build_supernet(space, seed=100).state_dict().values()])
        with open(result_path, "w") as f:
            json.dump({"world_size": dist.get_world_size(), "steps": result.steps,
                       "max_abs_diff": float((gathered[0] - gathered[1]).abs().max()),
                       "moved": float((gathered[0] - initial).abs().max())}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
