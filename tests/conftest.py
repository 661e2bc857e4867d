"""Shared fixtures: tiny BERT teachers and MobileBERT students built from configs (no network)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

# On a 2-core machine torch's default two threads collapse when the other core is busy.
torch.set_num_threads(1)

VOCAB_SIZE = 100


def tiny_bert_config(**overrides):
    from transformers import BertConfig

    kwargs = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=2,
        attn_implementation="eager",
    )
    kwargs.update(overrides)
    return BertConfig(**kwargs)


def tiny_mobilebert_config(**overrides):
    from transformers import MobileBertConfig

    kwargs = dict(
        vocab_size=VOCAB_SIZE,
        hidden_size=16,
        embedding_size=8,
        intra_bottleneck_size=8,
        true_hidden_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        num_feedforward_networks=1,
        max_position_embeddings=64,
        num_labels=2,
        normalization_type="layer_norm",
        attn_implementation="eager",
    )
    kwargs.update(overrides)
    return MobileBertConfig(**kwargs)


@pytest.fixture
def bert_teacher():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_bert_config()).eval()


@pytest.fixture
def mobilebert_student():
    from transformers import MobileBertForSequenceClassification

    torch.manual_seed(1)
    return MobileBertForSequenceClassification(tiny_mobilebert_config())


def random_batch(batch_size: int = 4, seq_len: int = 10, pad_last: int = 3, with_labels: bool = True, seed: int = 0):
    """A batch of random token ids; the last `pad_last` positions of the first row are padding."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, VOCAB_SIZE, (batch_size, seq_len), generator=g)
    attention_mask = torch.ones(batch_size, seq_len, dtype=torch.long)
    if pad_last:
        input_ids[0, -pad_last:] = 0
        attention_mask[0, -pad_last:] = 0
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if with_labels:
        batch["labels"] = torch.randint(0, 2, (batch_size,), generator=g)
    return batch
