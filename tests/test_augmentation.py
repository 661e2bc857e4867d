"""TinyBERT-style augmentation: teacher-embedding neighbours, masking, span deletion; deterministic under a seed;
augmented rows are unlabelled, come from the train texts only, and their teacher outputs are cached once."""

from __future__ import annotations

import types

import datasets
import pytest
import torch

from autodistill_trainer import ConfigError
from autodistill_trainer.configs.augmentation import AugmentationArguments
from autodistill_trainer.data.augmentation import TeacherNeighbours, TextAugmenter, augment_dataset
from autodistill_trainer.data.tokenization import tokenize_dataset
from autodistill_trainer.data.unlabeled import UNLABELED, distillation_train_data
from autodistill_trainer.recipe import _parse_section
from autodistill_trainer.configs.sections import DataArguments
from autodistill_trainer.teacher_cache import TeacherOutputCache, teacher_column
from autodistill_trainer.mappings import parse_layer_mappings

WORDS = ["good", "great", "fine", "bad", "awful", "poor", "film", "movie", "plot", "the", "a", "is", "was"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, "##ing", "##s", "!", ",", "."]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import BertTokenizer

    path = tmp_path_factory.mktemp("tok") / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return BertTokenizer(vocab=str(path), do_lower_case=True)


@pytest.fixture(scope="module")
def teacher():
    """A tiny BERT whose input embeddings put synonyms side by side (good~great~fine, bad~awful~poor, film~movie)."""
    from transformers import BertForSequenceClassification

    from helpers import tiny_bert_config

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(vocab_size=len(VOCAB))).eval()
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(len(VOCAB), 32, generator=g)
    groups = [["good", "great", "fine"], ["bad", "awful", "poor"], ["film", "movie"]]
    for group_number, group in enumerate(groups):
        centre = torch.randn(32, generator=g) * 10
        for rank, word in enumerate(group):
            weight[VOCAB.index(word)] = centre + torch.randn(32, generator=g) * (0.1 + rank)
    weight[VOCAB.index("##ing")] = weight[VOCAB.index("good")]  # a continuation piece is never a neighbour
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(weight)
    return model


def args(**overrides) -> AugmentationArguments:
    return AugmentationArguments(**{"copies": 3, "seed": 0, **overrides})


def test_neighbours_are_whole_words_nearest_in_the_teachers_embedding_space(tokenizer, teacher):
    neighbours = TeacherNeighbours(teacher.get_input_embeddings().weight, tokenizer, top_k=2)
    assert neighbours.neighbours("good") == ["great", "fine"]
    assert set(neighbours.neighbours("Awful")) == {"bad", "poor"}
    assert neighbours.neighbours("movie")[0] == "film"
    assert neighbours.neighbours("goods") == []  # two pieces: not one whole-word token
    assert neighbours.neighbours("!") == []  # not a word
    everything = {w for word in WORDS for w in TeacherNeighbours(
        teacher.get_input_embeddings().weight, tokenizer, top_k=20).neighbours(word)}
    assert everything <= set(WORDS)  # no special token, continuation piece or punctuation


def test_replace_swaps_words_for_their_neighbours_and_keeps_the_rest(tokenizer, teacher):
    neighbours = TeacherNeighbours(teacher.get_input_embeddings().weight, tokenizer, top_k=1)
    augmenter = TextAugmenter(args(methods=["replace"], word_prob=1.0, copies=1), tokenizer, neighbours)
    [(copy,)] = augmenter.copies("Good film, awful movie!")
    first, second, third, fourth = copy.replace(",", " ").replace("!", " ").split()
    assert first in ("Great", "Fine") and second == "movie" and third in ("bad", "poor") and fourth == "film"
    assert copy == f"{first} {second}, {third} {fourth}!"  # punctuation, spacing and capitals kept


def test_mask_uses_the_tokenizers_mask_token(tokenizer):
    augmenter = TextAugmenter(args(methods=["mask"], word_prob=1.0, copies=1), tokenizer)
    assert augmenter.copies("a good film.") == [("[MASK] [MASK] [MASK].",)]


def test_delete_removes_one_span_of_at_most_max_delete_words_and_never_everything(tokenizer):
    augmenter = TextAugmenter(args(methods=["delete"], max_delete_words=2, copies=20), tokenizer)
    source = "the plot is good the film was awful"
    copies = [c for (c,) in augmenter.copies(source)]
    assert copies
    for copy in copies:
        removed = len(source.split()) - len(copy.split())
        assert 1 <= removed <= 2 and copy.split()[0] in source.split()
    assert augmenter.copies("alone") == []  # one word: nothing can be deleted, the copy is dropped


def _raw_train():
    return datasets.Dataset.from_dict({
        "text": ["a good film", "the plot was awful", "a fine movie is good", "poor plot , bad film"],
        "label": [1, 0, 1, 0],
    })


def test_augmentation_is_deterministic_under_its_seed(tokenizer, teacher):
    settings = args(copies=4, word_prob=0.5)
    first = augment_dataset(_raw_train(), settings, tokenizer, teacher)
    second = augment_dataset(_raw_train(), settings, tokenizer, teacher)
    assert list(first["text"]) == list(second["text"]) and len(first) > 0
    assert first._fingerprint == second._fingerprint
    other = augment_dataset(_raw_train(), args(copies=4, word_prob=0.5, seed=1), tokenizer, teacher)
    assert list(other["text"]) != list(first["text"]) and other._fingerprint != first._fingerprint
    assert first.column_names == ["text"]  # no label: the rows are unlabelled


def test_augmented_rows_are_unlabelled_come_from_train_only_and_leave_validation_untouched(tokenizer, teacher):
    train = _raw_train()
    validation = datasets.Dataset.from_dict({"text": ["movie is great", "bad bad plot"], "label": [1, 0]})
    raw = datasets.DatasetDict({"train": train, "validation": validation})
    tokenized = tokenize_dataset(raw, tokenizer, max_length=16)
    before = tokenized["validation"]._fingerprint
    data_args = types.SimpleNamespace(augmentation=args(copies=2, methods=["mask"], word_prob=1.0), max_length=16)
    merged = distillation_train_data(raw, tokenized, data_args, tokenizer, teacher)
    labels = list(merged["labels"])
    assert labels[:4] == [1, 0, 1, 0] and len(merged) > 4 and set(labels[4:]) == {UNLABELED}
    mask_id = tokenizer.mask_token_id
    for ids in list(merged["input_ids"])[4:]:
        assert mask_id in ids  # every extra row is a masked copy of a train text
    assert tokenized["validation"]._fingerprint == before and len(tokenized["validation"]) == 2
    validation_ids = {tuple(ids) for ids in tokenized["validation"]["input_ids"]}
    assert not validation_ids & {tuple(ids) for ids in merged["input_ids"]}


def test_teacher_outputs_for_augmented_rows_are_computed_once_and_reused_by_a_rerun(tmp_path, tokenizer, teacher):
    from transformers import DataCollatorWithPadding

    def build():
        raw = datasets.DatasetDict({"train": _raw_train()})
        tokenized = tokenize_dataset(raw, tokenizer, max_length=16, cache_dir=str(tmp_path / "tok"))
        data_args = types.SimpleNamespace(augmentation=args(copies=3, word_prob=0.6), max_length=16)
        return distillation_train_data(raw, tokenized, data_args, tokenizer, teacher, cache_dir=str(tmp_path / "tok"))

    mappings = parse_layer_mappings([("classifier", "classifier")])
    collator = DataCollatorWithPadding(tokenizer)
    first = TeacherOutputCache(teacher, str(tmp_path / "cache"), collator, batch_size=4)
    data = build()
    with_outputs = first.dataset_for(data, mappings)
    assert first.passes == 1 and len(with_outputs) == len(data) > 4
    column = teacher_column(mappings[0])
    assert len(with_outputs[column]) == len(data)  # augmented rows too
    calls = []
    hook = teacher.register_forward_hook(lambda *a: calls.append(1))
    try:
        rerun = TeacherOutputCache(teacher, str(tmp_path / "cache"), collator, batch_size=4)
        again = rerun.dataset_for(build(), mappings)
    finally:
        hook.remove()
    assert rerun.passes == 0 and calls == []
    assert torch.equal(torch.as_tensor(again[column]), torch.as_tensor(with_outputs[column]))


def test_the_augmentation_section_is_typed_and_checked():
    data = _parse_section(DataArguments, {"dataset_name": "x", "augmentation": {"copies": 2, "methods": ["mask"]}},
                          "data")
    assert data.augmentation == AugmentationArguments(copies=2, methods=["mask"])
    for bad, message in [({"copies": 0}, "copies must be a positive integer"),
                         ({"methods": ["swap"]}, "unknown method 'swap'"),
                         ({"word_prob": 1.5}, "word_prob"),
                         ({"cpoies": 2}, "unknown key 'cpoies'.*copies")]:
        with pytest.raises(ConfigError, match=message):
            _parse_section(DataArguments, {"dataset_name": "x", "augmentation": bad}, "data")
    with pytest.raises(ConfigError, match="text-classification task only"):
        _parse_section(DataArguments, {"task": "pretraining", "dataset_name": "x", "unlabeled_file": "u.txt"}, "data")
