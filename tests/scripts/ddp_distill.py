"""Run by tests under `accelerate launch` with 2 CPU processes: distil a tiny student, report rank state."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from transformers import BertForSequenceClassification, MobileBertForSequenceClassification, TrainingArguments  # noqa: E402

from autodistill_trainer import DistillationTrainer  # noqa: E402
from helpers import tiny_bert_config, tiny_mobilebert_config  # noqa: E402
from helpers import RandomTextClassification, mobilebert_block_mappings  # noqa: E402

torch.set_num_threads(1)


def main(output_path: str) -> None:
    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config()).eval()
    torch.manual_seed(100 + rank)  # different student init per rank: DDP must broadcast rank 0's
    student = MobileBertForSequenceClassification(tiny_mobilebert_config())
    args = TrainingArguments(
        output_dir=os.path.join(os.path.dirname(output_path), "ddp_out"), per_device_train_batch_size=4, max_steps=4,
        learning_rate=1e-2, logging_steps=1, report_to=[], save_strategy="no", disable_tqdm=True, seed=0, use_cpu=True,
    )
    criterion = {
        "layer_mappings": mobilebert_block_mappings(0) + [("classifier", "classifier")],
        "loss_types": ["KL", "MSE", "KL"], "add_origin_loss": True, "matcher_seed": 7 * rank,
    }
    trainer = DistillationTrainer(model=student, teacher_model=teacher, criterion=criterion, args=args,
                                  train_dataset=RandomTextClassification(32))
    matcher_init = trainer.criterion.feature_matchers["1"].weight.detach().clone()
    trainer.train()
    flat = torch.cat([p.detach().flatten() for p in student.parameters()])
    matchers = torch.cat([p.detach().flatten() for p in trainer.criterion.feature_matchers.parameters()])
    state = torch.cat([flat, matchers])
    gathered = [torch.zeros_like(state) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, state)
    if rank == 0:
        logs = [e for e in trainer.state.log_history if "loss" in e]
        names, weights = trainer.criterion.loss_names, trainer.criterion.loss_weights
        result = {
            "world_size": dist.get_world_size(),
            "distributed_type": str(trainer.accelerator.distributed_type),
            "max_abs_diff": float((gathered[0] - gathered[1]).abs().max()),
            "matchers_moved": bool(not torch.allclose(matcher_init, trainer.criterion.feature_matchers["1"].weight)),
            "logged": [(e["loss"], e["origin_loss"] + sum(w * e[n] for w, n in zip(weights, names))) for e in logs],
        }
        with open(output_path, "w") as f:
            json.dump(result, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
