"""Teacher rewiring (model.selection_order: importance): function-preserving reorders, importance, selection."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autodistill_trainer.rewiring import (  # noqa: E402
    importance_batches,
    importance_orders,
    permute_teacher,
    rewired_teacher,
)
from autodistill_trainer.weight_selection import select_teacher_weights  # noqa: E402
from tests.test_weight_selection import student  # noqa: E402


def teacher() -> BertForSequenceClassification:
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=40, num_labels=3, layer_norm_eps=1e-5)
    torch.manual_seed(0)
    return BertForSequenceClassification(config).eval()


def batches(n: int = 3) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(2)
    out = []
    for _ in range(n):
        ids = torch.randint(1, 100, (4, 10), generator=generator)
        mask = torch.ones_like(ids)
        mask[0, 6:] = 0
        out.append({"input_ids": ids, "attention_mask": mask, "labels": torch.zeros(4, dtype=torch.long)})
    return out


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([item[k] for item in items]) for k in items[0]}


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_any_permutation_of_heads_units_residual_and_pooler_keeps_the_teachers_logits():
    t = teacher()
    batch = batches(1)[0]
    expected = logits(t, batch)
    generator = torch.Generator().manual_seed(5)
    orders = {"heads": [torch.randperm(4, generator=generator).tolist() for _ in range(3)],
              "units": [torch.randperm(64, generator=generator).tolist() for _ in range(3)],
              "hidden": torch.randperm(32, generator=generator).tolist(),
              "pooler": torch.randperm(32, generator=generator).tolist()}
    permuted = permute_teacher(teacher(), orders)
    assert not torch.equal(permuted.bert.encoder.layer[0].intermediate.dense.weight,
                           t.bert.encoder.layer[0].intermediate.dense.weight)
    torch.testing.assert_close(logits(permuted, batch), expected, atol=1e-5, rtol=0)


def test_the_rewired_teacher_is_a_reordered_copy_and_the_teacher_is_left_as_it_is():
    t = teacher()
    before = {k: v.clone() for k, v in t.state_dict().items()}
    rewired = rewired_teacher(t, batches())
    assert rewired is not t
    assert all(torch.equal(before[k], v) for k, v in t.state_dict().items())
    torch.testing.assert_close(logits(rewired, batches(1)[0]), logits(t, batches(1)[0]), atol=1e-5, rtol=0)
    orders = importance_orders(t, batches())
    for layer, (head_order, unit_order) in enumerate(zip(orders["heads"], orders["units"])):
        assert sorted(head_order) == list(range(4)) and sorted(unit_order) == list(range(64))
    assert sorted(orders["hidden"]) == list(range(32)) and sorted(orders["pooler"]) == list(range(32))


def test_a_silenced_head_unit_and_dimension_rank_last():
    t = teacher()
    with torch.no_grad():
        layer = t.bert.encoder.layer[1]
        layer.attention.output.dense.weight[:, 2 * 8:3 * 8] = 0  # head 2 adds nothing to the residual stream
        layer.output.dense.weight[:, 17] = 0  # unit 17 writes nothing
        layer.output.dense.weight[:, 40] *= 50  # unit 40 writes a lot
        for norm in [t.bert.embeddings.LayerNorm] + [m.output.LayerNorm for m in t.bert.encoder.layer]:
            norm.weight[9] = 0  # dimension 9 is zero after every LayerNorm
            norm.bias[9] = 0
    orders = importance_orders(t, batches())
    assert orders["heads"][1][-1] == 2
    assert orders["units"][1][-1] == 17 and orders["units"][1][0] == 40
    assert orders["hidden"][-1] == 9


def test_selection_from_the_rewired_teacher_copies_the_most_important_units_heads_and_dimensions():
    t = teacher()
    with torch.no_grad():
        t.bert.encoder.layer[2].output.dense.weight[:, 40] *= 50
    orders = importance_orders(t, batches())
    s = student(hidden=16, heads=2, ffn=8, layers=3)
    select_teacher_weights(s, rewired_teacher(t, batches()))
    top_dims = torch.as_tensor(orders["hidden"][:16])
    top_units = torch.as_tensor(orders["units"][2][:8])
    assert top_units[0] == 40
    expected = t.bert.encoder.layer[2].intermediate.dense.weight[top_units][:, top_dims]
    torch.testing.assert_close(s.mobilebert.encoder.layer[2].intermediate.dense.weight, expected)
    heads = orders["heads"][0][:2]  # head size 8: the student's 16 query rows are the teacher's two best heads
    rows = torch.cat([torch.arange(h * 8, (h + 1) * 8) for h in heads])
    torch.testing.assert_close(s.mobilebert.encoder.layer[0].attention.self.query.weight,
                               t.bert.encoder.layer[0].attention.self.query.weight[rows][:, top_dims])


def test_importance_batches_spread_over_the_split_and_carry_model_inputs_only():
    from datasets import Dataset

    rows = Dataset.from_dict({"input_ids": [[i + 1, 2, 3] for i in range(100)], "attention_mask": [[1, 1, 1]] * 100,
                              "labels": list(range(100)), "text": ["x"] * 100})
    batches = list(importance_batches(rows, collate, rows=10, batch_size=4))
    firsts = torch.cat([b["input_ids"][:, 0] for b in batches]).tolist()
    assert firsts == [1 + 10 * i for i in range(10)] and [len(b["input_ids"]) for b in batches] == [4, 4, 2]
    assert all(set(b) == {"input_ids", "attention_mask"} for b in batches)


def test_a_selection_source_rewires_once_for_importance_and_not_at_all_for_leading():
    from datasets import Dataset

    from autodistill_trainer.weight_selection import SelectionSource

    t = teacher()
    data = batches(2)
    rows = Dataset.from_dict({"input_ids": torch.cat([b["input_ids"] for b in data]).tolist(),
                              "attention_mask": torch.cat([b["attention_mask"] for b in data]).tolist()})

    assert SelectionSource(t, "leading", rows, collate).get() is t
    source = SelectionSource(t, "importance", rows, collate)
    rewired = source.get()
    assert rewired is not t and source.get() is rewired
    expected = permute_teacher(teacher(), importance_orders(t, importance_batches(rows, collate)))
    for (name, a), b in zip(rewired.state_dict().items(), expected.state_dict().values()):
        assert torch.equal(a, b), name
