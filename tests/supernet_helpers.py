"""Tiny elastic spaces and supernets shared by the supernet tests (no network)."""

from __future__ import annotations

from helpers import VOCAB_SIZE

#: A space of 486 architectures over every elastic field (all nest in a 32-wide, 3-layer, 3-FFN supernet).
TINY_SPACE = {
    "hidden_size": [16, 24, 32],
    "intra_bottleneck_size": [8, 12, 16],
    "num_attention_heads": [1, 2, 4],
    "intermediate_size": [16, 32],
    "num_feedforward_networks": [1, 2, 3],
    "num_hidden_layers": [1, 2, 3],
}


def tiny_base_config(**overrides):
    """The students' base config at test scale (the defaults of ``default_mobilebert_base_config`` otherwise)."""
    from autodistill_trainer.builders import default_mobilebert_base_config

    kwargs = dict(vocab_size=VOCAB_SIZE, max_position_embeddings=64, embedding_size=8, hidden_size=32,
                  intra_bottleneck_size=16, num_hidden_layers=3, intermediate_size=32)
    kwargs.update(overrides)
    return default_mobilebert_base_config(**kwargs)


def tiny_space(search_space=None, **overrides):
    from autodistill_trainer.supernet.space import ElasticSpace

    return ElasticSpace(tiny_base_config(**overrides), TINY_SPACE if search_space is None else search_space)


def covering_archs(space, seed: int = 0):
    """Random architectures of `space` until every value of every searched field has appeared (each one adds one)."""
    import random

    rng = random.Random(seed)
    missing = {(f, v) for f, values in space.search_space.items() for v in values}
    archs = []
    while missing:
        arch = space.sample(rng)
        if missing & set(arch.items()):
            missing -= set(arch.items())
            archs.append(arch)
    return archs


def tiny_teacher():
    """A seeded tiny BERT classifier teacher in eval mode (2 layers, 4 heads, hidden 32)."""
    import torch
    from helpers import tiny_bert_config
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config()).eval()


def supernet_args(tmp_path, **overrides):
    """The ``TrainingArguments`` of the supernet-training tests (CPU, no saving, no progress bars), with overrides."""
    from transformers import TrainingArguments

    kwargs = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, learning_rate=1e-2,
                  logging_steps=1, report_to=[], save_strategy="no", disable_tqdm=True, seed=0, use_cpu=True)
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)
