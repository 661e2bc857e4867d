"""Teacher-output cache: the teacher features that mappings need, computed once and memory-mapped.

The teacher is the same in every stage and every trial of a search, so its outputs on the training set
are computed in one pass per (dataset, teacher, feature, max length) and stored on disk in half
precision as an Arrow file (``datasets``' memory-mapped cache, named by a fingerprint of those inputs).
Stages, trials and reruns then read them instead of running the teacher.

What can be cached: features with no token dimension (sequence-classification logits: ``(B, C)``) and
token features ``(B, L, D)`` (hidden states, MLM logits), stored per example without padding. Attention
maps ``(B, H, L, L)``, and any set of features larger than the size budget, are left to the live
teacher: a stage uses the cache only when *every* teacher feature it needs is cached.

Columns are named ``teacher_<hash of (teacher layer, process)>``; a callable process is keyed by what it
computes (:func:`~autodistill_trainer.fingerprints.process_fingerprint`: bytecode, constants, closure and
globals), and one that cannot be keyed that way (a callable object, a closure over a model) is not cached:
the live teacher serves it. Files are keyed by the dataset's fingerprint, the teacher's weights (rehashed
whenever they change, even in place) and the columns. The trainer keeps the columns through
``remove_unused_columns``, pads them in the collator (:class:`TeacherCacheCollator`) and hands them to the
criterion instead of running the teacher.

Writing is safe under concurrency: each writer writes its own temporary file (pid + uuid) and renames it
atomically into place, under a file lock per cache file, so a second process or thread building the same
file waits for the first and reads its result.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid
from typing import Any, Callable, Sequence

import datasets
import numpy as np
import torch
from filelock import FileLock
from torch import nn
from tqdm.auto import tqdm

from .criterion_setup import filter_model_inputs, model_input_names
from .features import FeatureCapture
from .fingerprints import model_fingerprint, process_fingerprint, weights_token
from .mappings import LayerMapping

logger = logging.getLogger(__name__)

COLUMN_PREFIX = "teacher_"


def teacher_column(mapping: LayerMapping) -> str:
    """Dataset column holding the cached teacher feature of `mapping` (see the module docstring).

    A process that :func:`cacheable` rejects still gets a name, unique to that process object, but no
    column of that name is ever written, so the trainer falls back to the live teacher for it.
    """
    process = process_fingerprint(mapping.teacher_process)
    if process is None:
        process = f"uncacheable-{id(mapping.teacher_process)}"
    digest = hashlib.sha1(f"{mapping.teacher_layer}|{process}".encode()).hexdigest()[:12]
    return f"{COLUMN_PREFIX}{digest}"


def cacheable(mapping: LayerMapping) -> bool:
    """Whether the teacher feature of `mapping` can be keyed in the cache by what its process computes."""
    return process_fingerprint(mapping.teacher_process) is not None


class TeacherCacheCollator:
    """Wrap a collator: pad the cached teacher columns (token dimension first) and stack them."""

    def __init__(self, base: Callable[[list[dict]], dict]):
        self.base = base

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        cached = {k: [f.pop(k) for f in features] for k in list(features[0]) if k.startswith(COLUMN_PREFIX)}
        batch = self.base(features)
        mask = batch.get("attention_mask")
        for key, values in cached.items():
            tensors = [torch.as_tensor(np.asarray(v, dtype=np.float16)) for v in values]
            if tensors[0].ndim >= 2:  # token features: scatter each example onto its real positions
                length = mask.shape[1] if mask is not None else max(t.shape[0] for t in tensors)
                out = torch.zeros(len(tensors), length, *tensors[0].shape[1:], dtype=tensors[0].dtype)
                for i, t in enumerate(tensors):
                    positions = mask[i].bool().nonzero().squeeze(1) if mask is not None else torch.arange(t.shape[0])
                    out[i, positions] = t
                batch[key] = out
            else:
                batch[key] = torch.stack(tensors)
        return batch


class TeacherOutputCache:
    """Compute and serve cached teacher outputs for datasets (see the module docstring).

    Args:
        teacher: the teacher model (eval mode, any device).
        cache_dir: where the Arrow files go (e.g. ``output_dir/cache``).
        data_collator: pads tokenized examples into a batch (e.g. ``DataCollatorWithPadding``).
        max_bytes: size budget of one cached feature set; larger sets are left to the live teacher.
        batch_size: batch size of the teacher pass.
        main_process_first: optional context manager factory (``TrainingArguments.main_process_first``)
            so that under several processes only the first computes and the others read the file.
        disable_tqdm: no progress bar for the teacher pass (``TrainingArguments.disable_tqdm``).
    """

    def __init__(
        self,
        teacher: nn.Module,
        cache_dir: str,
        data_collator: Callable[[list[dict]], dict],
        max_bytes: float = 2 * 1024**3,
        batch_size: int = 64,
        main_process_first: Callable[..., Any] | None = None,
        disable_tqdm: bool = False,
    ):
        self.teacher = teacher
        self.disable_tqdm = disable_tqdm
        self.cache_dir = cache_dir
        self.data_collator = data_collator
        self.max_bytes = float(max_bytes)
        self.batch_size = int(batch_size)
        self.main_process_first = main_process_first
        self._teacher_fingerprint: str | None = None
        self._teacher_token: str | None = None
        self._input_names = model_input_names(teacher)
        self.passes = 0  # teacher passes over a dataset made by this object (for tests and benchmarks)

    @property
    def teacher_fingerprint(self) -> str:
        """Hash of the teacher's weights, recomputed whenever :func:`weights_token` says they changed."""
        token = weights_token(self.teacher)
        if self._teacher_fingerprint is None or token != self._teacher_token:
            if self._teacher_fingerprint is not None:
                logger.info("The teacher's weights changed since its outputs were last cached: rehashing them.")
            self._teacher_fingerprint = model_fingerprint(self.teacher)
            self._teacher_token = token
        return self._teacher_fingerprint

    # ------------------------------------------------------------------ building
    def _collate(self, dataset, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """One collated batch of the rows `indices` of `dataset`, without cached teacher columns."""
        columns = [c for c in dataset.column_names if not c.startswith(COLUMN_PREFIX)]
        rows = dataset.select_columns(columns)[list(indices)]
        return self.data_collator([dict(zip(rows, values)) for values in zip(*rows.values())])

    def _probe(self, batch: dict[str, torch.Tensor], mappings: Sequence[LayerMapping]):
        """Kind ('sample' or 'token') and width of each feature, or (None, None) when one cannot be cached."""
        outputs = self._run_teacher(batch, mappings)
        length = batch["attention_mask"].shape[1] if "attention_mask" in batch else batch["input_ids"].shape[1]
        kinds, sizes = {}, {}
        for mapping, tensor in zip(mappings, outputs):
            column = teacher_column(mapping)
            if isinstance(tensor, torch.Tensor) and tensor.ndim == 2:
                kinds[column] = "sample"
            elif isinstance(tensor, torch.Tensor) and tensor.ndim == 3 and tensor.shape[1] == length:
                kinds[column] = "token"
            else:
                shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
                logger.debug(
                    "teacher feature %s is not cacheable (shape %s): the live teacher is used.",
                    mapping.teacher_layer, shape,
                )
                return None, None
            sizes[column] = int(tensor.shape[-1])
        return kinds, sizes

    def _run_teacher(self, batch: dict[str, torch.Tensor], mappings: Sequence[LayerMapping]) -> list[torch.Tensor]:
        capture = FeatureCapture(self.teacher, [(m.teacher_layer, m.teacher_process) for m in mappings], role="teacher")
        device = next(self.teacher.parameters()).device
        try:
            with torch.no_grad():
                self.teacher.eval()
                self.teacher(**{k: v.to(device) for k, v in filter_model_inputs(batch, self._input_names).items()})
            return [capture.get(m.teacher_layer, m.teacher_process) for m in mappings]
        finally:
            capture.remove()

    def _estimate_bytes(self, dataset, kinds: dict[str, str], sizes: dict[str, int]) -> float:
        tokens = sum(len(ids) for ids in dataset["input_ids"]) if "token" in kinds.values() else 0
        return sum(2.0 * sizes[c] * (tokens if kind == "token" else len(dataset)) for c, kind in kinds.items())

    def dataset_for(self, dataset, mappings: Sequence[LayerMapping]):
        """`dataset` with the cached teacher columns for `mappings` added, or `dataset` unchanged when
        they cannot be cached (attention maps, a process :func:`cacheable` rejects, over the size budget,
        no ``datasets.Dataset``)."""
        if not isinstance(dataset, datasets.Dataset) or len(dataset) == 0:
            return dataset
        rejected = [m for m in mappings if not cacheable(m)]
        if rejected:
            logger.info(
                "Teacher outputs are not cached: the process of %s is a %s whose behaviour cannot be fingerprinted "
                "(use a plain function, lambda or functools.partial); the live teacher is used.",
                rejected[0].teacher_layer, type(rejected[0].teacher_process).__name__,
            )
            return dataset
        by_column = {teacher_column(m): m for m in mappings}
        missing = [m for column, m in by_column.items() if column not in dataset.column_names]
        if not missing:
            return dataset
        path = self._path(dataset, missing)
        if os.path.isfile(path):
            logger.info("Teacher outputs read from the cache %s", path)
            features = datasets.Dataset.from_file(path)
        else:
            features = self._build(dataset, missing, path)
            if features is None:
                return dataset
        merged = datasets.concatenate_datasets([dataset, features], axis=1)
        columns = [c for c in merged.column_names if c.startswith(COLUMN_PREFIX)]
        return merged.with_format("numpy", columns=columns, output_all_columns=True)

    def _path(self, dataset, mappings: Sequence[LayerMapping]) -> str:
        columns = sorted(teacher_column(m) for m in mappings)
        key = hashlib.sha256("|".join([dataset._fingerprint, self.teacher_fingerprint, *columns, "float16"]).encode())
        return os.path.join(self.cache_dir, f"teacher-outputs-{key.hexdigest()[:20]}.arrow")

    def _build(self, dataset, mappings: Sequence[LayerMapping], path: str):
        context = (
            self.main_process_first(desc="teacher outputs") if self.main_process_first else contextlib.nullcontext()
        )
        os.makedirs(self.cache_dir, exist_ok=True)
        with context, FileLock(path + ".lock"):
            if os.path.isfile(path):  # another process or thread wrote it meanwhile
                logger.info("Teacher outputs read from the cache %s", path)
                return datasets.Dataset.from_file(path)
            probe_batch = self._collate(dataset, range(min(4, len(dataset))))
            kinds, sizes = self._probe(probe_batch, mappings)
            if kinds is None:
                return None
            estimate = self._estimate_bytes(dataset, kinds, sizes)
            if estimate > self.max_bytes:
                logger.info(
                    "teacher features need ~%.2f GB, over the cache budget of %.2f GB: the live teacher is used.",
                    estimate / 1e9, self.max_bytes / 1e9,
                )
                return None
            return self._features_dataset(dataset, mappings, kinds, path)

    def _features_dataset(self, dataset, mappings: Sequence[LayerMapping], kinds: dict[str, str], path: str):
        # One teacher pass, written batch by batch to an Arrow file (never whole in RAM).
        columns = [teacher_column(m) for m in mappings]
        features = datasets.Features({
            c: datasets.Sequence(datasets.Sequence(datasets.Value("float16"))) if kinds[c] == "token"
            else datasets.Sequence(datasets.Value("float16"))
            for c in columns
        })
        logger.info("Computing teacher outputs for %d examples once (%s) -> %s", len(dataset), ", ".join(columns), path)
        self.passes += 1
        tmp = f"{path}.{os.getpid()}-{uuid.uuid4().hex}.tmp"  # this writer's own file, renamed atomically
        writer = datasets.arrow_writer.ArrowWriter(features=features, path=tmp)
        written = False
        # Batches of similar lengths (sorted within windows, so padding costs little and memory stays
        # bounded); each window's rows are written back in dataset order.
        lengths = [len(ids) for ids in dataset["input_ids"]] if "input_ids" in dataset.column_names else None
        window = self.batch_size * 32
        try:
            progress = tqdm(total=len(dataset), desc="teacher outputs", unit="ex", disable=self.disable_tqdm)
            for start in range(0, len(dataset), window):
                indices = list(range(start, min(start + window, len(dataset))))
                if lengths is not None:
                    indices.sort(key=lambda i: lengths[i])
                rows: dict[str, dict[int, Any]] = {c: {} for c in columns}
                for offset in range(0, len(indices), self.batch_size):
                    batch_indices = indices[offset : offset + self.batch_size]
                    batch = self._collate(dataset, batch_indices)
                    outputs = self._run_teacher(batch, mappings)
                    mask = batch["attention_mask"].bool().numpy() if "attention_mask" in batch else None
                    for column, tensor in zip(columns, outputs):
                        array = tensor.detach().to(torch.float16).cpu().numpy()
                        for j, index in enumerate(batch_indices):
                            # token features keep their real positions only
                            keep = array[j][mask[j]] if kinds[column] == "token" and mask is not None else array[j]
                            rows[column][index] = keep
                    progress.update(len(batch_indices))
                ordered = sorted(rows[columns[0]])
                writer.write_batch({c: [rows[c][i] for i in ordered] for c in columns})
            progress.close()
            writer.finalize()
            written = True
        finally:
            writer.close()
            if not written:  # a failed pass leaves no partial file behind
                with contextlib.suppress(FileNotFoundError):
                    os.remove(tmp)
        os.replace(tmp, path)
        return datasets.Dataset.from_file(path)
