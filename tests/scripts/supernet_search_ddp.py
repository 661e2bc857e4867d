"""Run by tests under `accelerate launch` with 2 CPU processes: a tiny supernet search (OOB backend).

Each rank writes ``rank<r>.json``: the best architecture, the finalists' metrics and a checksum of the supernet."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from helpers import pad_collator, tiny_bert_config, token_dataset  # noqa: E402
from supernet_helpers import tiny_base_config  # noqa: E402
from transformers import BertForSequenceClassification, MobileBertForSequenceClassification  # noqa: E402
from transformers import TrainingArguments  # noqa: E402

from autodistill_trainer.search.oob import OOBContext, run_autodistillation  # noqa: E402

torch.set_num_threads(1)


def accuracy(prediction):
    return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}


def fake_profile(model):
    params = sum(p.numel() for p in model.parameters())
    return {"params": params, "flops": 2 * params, "latency": params / 1e4}


def main(out_dir: str) -> None:
    rank = int(os.environ.get("RANK", "0"))
    torch.manual_seed(0)
    teacher = BertForSequenceClassification(tiny_bert_config()).eval()
    args = TrainingArguments(output_dir=os.path.join(out_dir, "run"), per_device_train_batch_size=4,
                             per_device_eval_batch_size=8, learning_rate=1e-2, report_to=[], save_strategy="no",
                             disable_tqdm=True, seed=0, use_cpu=True)
    context = OOBContext(args=args, train_dataset=token_dataset(16), eval_dataset=token_dataset(12, seed=1),
                         data_collator=pad_collator, compute_metrics=accuracy, student_config=tiny_base_config(),
                         student_cls=MobileBertForSequenceClassification)
    config = {"search": {"search_space": {"hidden_size": [16, 32], "num_hidden_layers": [1, 2]},
                         "search_algorithm": "random", "metrics": ["accuracy", "latency"], "seed": 1,
                         "strategy": "supernet",
                         "supernet": {"train_steps": 3, "num_random": 1, "finalists": 2, "finalist_budget": 0.5,
                                      "latency_measurements": 4}},
              "regular_distillation": {"layer_mappings_for_knowledge_transfer": [["classifier", "classifier"]],
                                       "loss_types": ["KL"], "add_origin_loss": True, "train_steps": 4}}
    agent, result = run_autodistillation(context, teacher, config, profile_func=fake_profile)
    finals = sorted(json.dumps(r["arch"], sort_keys=True) for r in result.rows if r.get("fidelity") == "final")
    checksum = float(sum(p.double().sum() for p in agent.backend.supernet.parameters()))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as fh:
        json.dump({"best": result.best_model_arch, "finals": finals, "n_rows": len(result.rows),
                   "supernet_checksum": checksum}, fh)


if __name__ == "__main__":
    main(sys.argv[1])
