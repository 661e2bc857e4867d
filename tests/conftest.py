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

from helpers import tiny_bert_config, tiny_mobilebert_config  # noqa: E402


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
