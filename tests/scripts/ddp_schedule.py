"""Run by tests under `accelerate launch` with 2 CPU processes: flash + regular stages, then compare ranks."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from transformers import BertForSequenceClassification, MobileBertForSequenceClassification, TrainingArguments  # noqa: E402

from autodistill_trainer.schedule import run_distillation  # noqa: E402
from helpers import tiny_bert_config, tiny_mobilebert_config  # noqa: E402
from helpers import RandomTextClassification  # noqa: E402

torch.set_num_threads(1)


def main(output_path: str) -> None:
    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config()).eval()
    torch.manual_seed(0)
    student = MobileBertForSequenceClassification(tiny_mobilebert_config())
    before = torch.cat([p.detach().flatten() for p in student.parameters()])
    args = TrainingArguments(
        output_dir=os.path.join(os.path.dirname(output_path), "ddp_schedule"), per_device_train_batch_size=4,
        learning_rate=1e-2, logging_steps=1, report_to=[], save_strategy="no", disable_tqdm=True, seed=0, use_cpu=True,
    )
    results = run_distillation(
        student, teacher, args, RandomTextClassification(32),
        flash_distillation={"block_names": "auto", "layer_mappings_for_knowledge_transfer": "auto", "train_steps": 2},
        regular_distillation={"train_steps": 2},
    )
    state = torch.cat([p.detach().flatten() for p in student.parameters()])
    gathered = [torch.zeros_like(state) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, state)
    if rank == 0:
        with open(output_path, "w") as f:
            json.dump({
                "stages": [r.kind for r in results],
                "max_abs_diff": float((gathered[0] - gathered[1]).abs().max()),
                "changed": bool(not torch.equal(before, state)),
            }, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
