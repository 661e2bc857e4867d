"""Run by tests under `accelerate launch` with 2 CPU processes: flash + regular stages, then compare ranks.

``ddp_schedule.py RESULT.json`` runs the auto flash stages and a regular stage; ``ddp_schedule.py RESULT.json
attention_only`` runs one flash stage whose only mapping is layer 0's attention maps (its value projection and
feed-forward get no gradient).
"""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from transformers import (  # noqa: E402
    BertForSequenceClassification,
    MobileBertForSequenceClassification,
    TrainingArguments,
)

from autodistill_trainer.schedule import run_distillation  # noqa: E402
from helpers import tiny_bert_config, tiny_mobilebert_config  # noqa: E402
from helpers import RandomTextClassification  # noqa: E402

torch.set_num_threads(1)


ATTENTION_ONLY = {
    "block_names": ["mobilebert.encoder.layer.0"],
    "layer_mappings_for_knowledge_transfer": [[
        ("mobilebert.encoder.layer.0.attention.self", "1", "bert.encoder.layer.0.attention.self", "1"),
    ]],
    "loss_types": [["KL"]],
    "train_steps": [2],
}


def main(output_path: str, mode: str = "auto") -> None:
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
    if mode == "attention_only":
        phases = {"flash_distillation": ATTENTION_ONLY}
    else:
        phases = {
            "flash_distillation": {"block_names": "auto", "layer_mappings_for_knowledge_transfer": "auto",
                                   "train_steps": 2},
            "regular_distillation": {"train_steps": 2},
        }
    params_before = {n: p.detach().clone() for n, p in student.named_parameters()}
    results = run_distillation(student, teacher, args, RandomTextClassification(32), **phases)
    state = torch.cat([p.detach().flatten() for p in student.parameters()])
    gathered = [torch.zeros_like(state) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, state)
    if rank == 0:
        with open(output_path, "w") as f:
            json.dump({
                "stages": [r.kind for r in results],
                "max_abs_diff": float((gathered[0] - gathered[1]).abs().max()),
                "changed": bool(not torch.equal(before, state)),
                "changed_names": sorted(n for n, p in student.named_parameters()
                                        if not torch.equal(params_before[n], p)),
                "requires_grad": all(p.requires_grad for p in student.parameters()),
            }, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
