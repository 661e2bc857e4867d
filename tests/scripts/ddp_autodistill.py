"""Run by tests under `accelerate launch` with 2 CPU processes: a tiny OOB autodistillation search."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from transformers import BertForSequenceClassification, MobileBertForSequenceClassification, TrainingArguments  # noqa: E402

from autodistill_trainer import DistillationTrainer  # noqa: E402
from autodistill_trainer.builders import build_model  # noqa: E402
from helpers import tiny_bert_config, tiny_mobilebert_config  # noqa: E402
from helpers import RandomTextClassification  # noqa: E402

torch.set_num_threads(1)


def main(out_dir: str) -> None:
    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config()).eval()
    student = MobileBertForSequenceClassification(tiny_mobilebert_config())
    args = TrainingArguments(
        output_dir=os.path.join(out_dir, "out"),
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
        use_cpu=True,
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=RandomTextClassification(32),
        eval_dataset=RandomTextClassification(8, seed=1),
    )
    trainer.autodistillation_config = {
        "search": {
            "search_space": {
                "hidden_size": [16, 24],
                "intra_bottleneck_size": [8],
                "num_attention_heads": [2],
                "intermediate_size": [32],
                "num_feedforward_networks": [1],
            },
            "search_algorithm": "grid",
            "metrics": ["loss", "latency"],
            "higher_is_better": [False, False],
            "max_trials": 2,
            "seed": 3,
        },
        "flash_distillation": {
            "block_names": "auto",
            "layer_mappings_for_knowledge_transfer": "auto",
            "train_steps": 2,
        },
        "regular_distillation": {"train_steps": 2},
    }
    archs, models = [], []

    def recording_builder(arch):  # the built-in builder's model, kept to compare weights across ranks after
        model = build_model(MobileBertForSequenceClassification, student.config, arch, attn_implementation="eager")
        archs.append(model.config.hidden_size)
        models.append(model)
        return model

    def profile(model):
        return {
            "params": sum(p.numel() for p in model.parameters()),
            "flops": 1,
            "latency": model.config.hidden_size / 10,
        }

    result = trainer.autodistillation(teacher, model_builder=recording_builder, profile_func=profile)
    best = [result.best_model_arch]
    dist.broadcast_object_list(best, src=0)
    # every trained student is identical on both ranks (trained together under DDP)
    state = torch.cat([p.detach().flatten() for m in models for p in m.parameters()])
    gathered = [torch.zeros_like(state) for _ in range(2)]
    dist.all_gather(gathered, state)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"archs": archs, "best": best[0], "weights_equal": bool(torch.equal(gathered[0], gathered[1]))}, f)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
