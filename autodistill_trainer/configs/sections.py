"""Recipe sections outside ``auto_distillation``'s design keys: model, teacher, data, evaluation, baseline.

Each dataclass checks its own values in ``__post_init__`` (types of recipe keys are checked by the recipe loader
before construction); checks that need the outside world (paths, models, installed packages) live in
:mod:`autodistill_trainer.validation`.
"""

from __future__ import annotations

import os

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from ..errors import ConfigError, did_you_mean
from . import checks
from .augmentation import AugmentationArguments

#: Shortest ``data.max_length``: two text tokens plus [CLS]/[SEP] (three special tokens for sentence pairs).
MIN_MAX_LENGTH = 5
#: Longest ``data.max_length`` / ``latency_seq_length``: the student's position table has this many rows at most.
MAX_SEQ_LENGTH = 8192
#: The latency runtimes, in report order: PyTorch eager, ONNX Runtime fp32, ONNX Runtime with dynamic int8 weights.
LATENCY_RUNTIMES = ("pytorch", "onnxruntime", "onnxruntime-int8")
#: ``evaluation.export_onnx`` values: the best student, also the Pareto front's students, nothing.
ONNX_EXPORT_SCOPES = ("best", "front", "none")
#: Upper bounds of the latency protocol (a typo such as ``1e9`` would otherwise time forwards for days).
MAX_LATENCY_REPEATS = 10_000
MAX_LATENCY_ROUNDS = 100
#: How the latency is estimated from its samples (autodistill_trainer.timing.ESTIMATORS; torch-free here).
LATENCY_ESTIMATORS = ("min", "median")
MAX_LATENCY_WARMUP = 10_000
MAX_LATENCY_BATCH_SIZE = 4096
MAX_LATENCY_THREADS = 1024
TEACHER_DTYPES = ("float32", "float16", "bfloat16", "float64")
DATA_TASKS = ("text-classification", "pretraining")

#: A value of a base-config override (a MobileBertConfig field).
ConfigValue = Union[bool, int, float, str, None, list[Union[int, float, str]]]


@dataclass
class ModelArguments:
    """The student: its class and base config (the search sets the architecture fields on top).

    Args:
        name: name of the run (the design's ``model.name``).
        framework: only ``'pytorch'``.
        student_class: a concrete transformers MobileBERT class name (not an ``Auto*`` class).
        base_config: overrides on the built-in MobileBERT base config, or a config path / Hub name.
        init_embeddings_from_teacher: initialise the student's word embeddings from the teacher's.
        select_teacher_weights: initialise every student weight from slices of the teacher's (weight selection,
            :mod:`autodistill_trainer.weight_selection`); needs students with BERT's layout.
        selection_order: which slices weight selection copies: ``importance`` (default) first sorts the teacher's
            heads, feed-forward units and residual dimensions by their importance on training batches
            (:mod:`autodistill_trainer.rewiring`), ``leading`` takes them in the teacher's own order.
        license: license of the student in the model card metadata (default: the shipped demo teacher's, else none).
    """

    name: str = field(default="autodistill", metadata={"help": "Name of the run (the design's model.name)."})
    framework: Literal["pytorch"] = field(default="pytorch", metadata={"help": "Only 'pytorch' is supported."})
    student_class: str = field(
        default="MobileBertForSequenceClassification",
        metadata={"help": "A concrete transformers model class name, e.g. MobileBertForSequenceClassification."},
    )
    base_config: Optional[Union[dict[str, ConfigValue], str]] = field(
        default=None,
        metadata={"help": "Overrides on the built-in MobileBERT base config (a mapping), or a config path/Hub name."},
    )
    init_embeddings_from_teacher: bool = field(
        default=True,
        metadata={"help": "Initialise student word embeddings from the teacher's (PCA to the student's width)."},
    )
    select_teacher_weights: bool = field(
        default=False,
        metadata={"help": "Initialise the student's embeddings, layers, pooler and classifier from slices of the "
                          "teacher's weights (weight selection; which slices: selection_order); needs students with "
                          "BERT's layout "
                          "(use_bottleneck false, num_feedforward_networks 1, trigram_input false, embedding_size = "
                          "hidden_size, the teacher's hidden_act)."},
    )
    selection_order: Literal["importance", "leading"] = field(
        default="importance",
        metadata={"help": "With select_teacher_weights: 'importance' copies the teacher's most important heads, "
                          "feed-forward units and residual dimensions (measured on training batches); 'leading' "
                          "the first ones in the teacher's order."},
    )
    license: Optional[str] = field(
        default=None,
        metadata={"help": "License of the student in the model card metadata (e.g. apache-2.0); default: the shipped "
                          "demo teacher's license, else none."},
    )

    def __post_init__(self) -> None:
        checks.non_empty_str(self.name, "model.name")
        if self.framework != "pytorch":
            raise ConfigError(f"model.framework {checks.shown(self.framework)} is not supported; use 'pytorch'.")
        if not isinstance(self.student_class, str) or not self.student_class.isidentifier():
            raise ConfigError(f"model.student_class must be a transformers class name, "
                              f"got {checks.shown(self.student_class)}.")
        if self.student_class.startswith("Auto"):
            concrete = "MobileBert" + (self.student_class[len("AutoModel"):] or "Model")
            raise ConfigError(
                f"model.student_class {self.student_class!r} is an Auto class, which picks the class from a config "
                f"the students do not have yet; name the concrete class, e.g. {concrete!r}."
            )
        if isinstance(self.base_config, str) and not self.base_config:
            raise ConfigError("model.base_config is an empty string; give overrides (a mapping), a path or null.")
        checks.boolean(self.init_embeddings_from_teacher, "model.init_embeddings_from_teacher")
        checks.boolean(self.select_teacher_weights, "model.select_teacher_weights")
        if self.selection_order not in ("importance", "leading"):
            raise ConfigError(f"model.selection_order {checks.shown(self.selection_order)} is not one of "
                              f"'importance', 'leading'.")
        checks.non_empty_str(self.license, "model.license", optional=True)


@dataclass
class TeacherArguments:
    """The teacher: a fine-tuned model, or a pretrained encoder that the CLI fine-tunes first.

    Args:
        model_name_or_path: path or Hub name of a fine-tuned teacher.
        pretrained_encoder: an encoder the CLI fine-tunes first (``offline:all-MiniLM-L6-v2``: the local wheel).
        finetune: TrainingArguments overrides for that fine-tuning.
        trust_remote_code: allow custom model code from the Hub.
        dtype: teacher dtype during distillation.
        cache_outputs: cache the teacher outputs the mappings need on disk.
        cache_max_gb: size budget of one cached feature set.
    """

    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Path or Hub name of a fine-tuned teacher."})
    pretrained_encoder: Optional[str] = field(
        default=None,
        metadata={"help": "Encoder to fine-tune as the teacher ('offline:all-MiniLM-L6-v2' uses the local wheel)."},
    )
    finetune: dict[str, ConfigValue] = field(
        default_factory=dict, metadata={"help": "TrainingArguments overrides for the teacher fine-tuning."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom model code from the Hub (off by default)."})
    dtype: Optional[Literal["float32", "float16", "bfloat16", "float64"]] = field(
        default=None, metadata={"help": "Teacher dtype for distillation (float16, bfloat16)."})
    cache_outputs: bool = field(
        default=True,
        metadata={"help": "Compute the teacher outputs the mappings need once, on disk (fp16), and reuse them."},
    )
    cache_max_gb: float = field(default=2.0, metadata={"help": "Size budget of one cached teacher feature set (GB)."})

    def __post_init__(self) -> None:
        checks.non_empty_str(self.model_name_or_path, "teacher.model_name_or_path", optional=True)
        checks.non_empty_str(self.pretrained_encoder, "teacher.pretrained_encoder", optional=True)
        if not isinstance(self.finetune, dict):
            raise ConfigError(f"teacher.finetune must be a mapping of TrainingArguments, "
                              f"got {checks.shown(self.finetune)}.")
        checks.boolean(self.trust_remote_code, "teacher.trust_remote_code")
        checks.boolean(self.cache_outputs, "teacher.cache_outputs")
        if self.dtype is not None and self.dtype not in TEACHER_DTYPES:
            raise ConfigError(
                f"teacher.dtype {checks.shown(self.dtype)} is not a floating dtype; use float32, float16 or bfloat16 "
                "(or null)." + did_you_mean(str(self.dtype), ["float32", "float16", "bfloat16"])
            )
        checks.positive_number(self.cache_max_gb, "teacher.cache_max_gb")


@dataclass
class DataArguments:
    """The data: text classification (default) or a text corpus for MLM + next-sentence pretraining distillation.

    Args:
        task: ``text-classification`` or ``pretraining``.
        dataset_name: Hub dataset name, or ``rotten_tomatoes_demo``.
        dataset_config_name: Hub dataset config.
        train_file: local csv/json training file.
        validation_file: local csv/json validation file.
        text_column: column with the text.
        text_pair_column: optional second text column.
        label_column: column with the labels.
        max_length: maximum tokens per example, in ``[5, 8192]``.
        validation_split_size: share in (0, 1) or count of examples split off train.
        max_train_samples: truncate the training set.
        max_eval_samples: truncate the validation set.
        unlabeled_file: in-domain texts without labels (text-classification only), used by the KD terms only.
        augmentation: TinyBERT-style augmented copies of the train (and unlabelled) texts, KD terms only
            (:class:`~autodistill_trainer.configs.augmentation.AugmentationArguments`).
        labelled_fraction: with unlabelled rows, the labelled share of every distillation batch, in (0, 1)
            (:mod:`~autodistill_trainer.labelled_share`); default: the train set's share, shuffled.
        cache_dir: where tokenized splits, distillation rows and teacher outputs are cached (default
            ``output_dir/cache``). Runs on the same data and teacher may share one: every file is keyed by its
            inputs and written atomically under a lock. Not part of the run's fingerprint.
    """

    task: Literal["text-classification", "pretraining"] = field(
        default="text-classification",
        metadata={"help": "'text-classification' (labelled texts; sequence-classification students) or 'pretraining' "
                          "(a text corpus: MLM + next-sentence pairs of consecutive lines; *ForPreTraining students "
                          "and teacher, metric mlm_accuracy)."},
    )
    dataset_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset name, or 'rotten_tomatoes_demo'."})
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset config (e.g. 'sst2')."})
    train_file: Optional[str] = field(default=None, metadata={"help": "Local csv/json training file."})
    validation_file: Optional[str] = field(default=None, metadata={"help": "Local csv/json validation file."})
    text_column: str = field(
        default="text", metadata={"help": "Column with the text (pretraining: one line/segment per row)."})
    text_pair_column: Optional[str] = field(default=None, metadata={"help": "Optional second text column."})
    label_column: str = field(default="label", metadata={"help": "Column with the labels (int or string)."})
    max_length: int = field(
        default=128, metadata={"help": f"Maximum tokens per example, {MIN_MAX_LENGTH}..{MAX_SEQ_LENGTH}."})
    validation_split_size: Optional[float] = field(
        default=None, metadata={"help": "Split this share (0..1) or count off train when there is no validation set."})
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Truncate the training set (for quick runs)."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the validation set."})
    unlabeled_file: Optional[str] = field(
        default=None,
        metadata={"help": "In-domain texts without labels for the teacher to teach on: a .txt file (one text a line) "
                          "or csv/tsv/json/jsonl with data.text_column. KD terms only: no label loss, no metric."},
    )
    augmentation: Optional[AugmentationArguments] = field(
        default=None,
        metadata={"help": "TinyBERT-style augmented copies of the train (and unlabelled) texts, KD terms only: "
                          "{copies, methods: [replace, mask, delete], word_prob, top_k, max_delete_words, seed}."},
    )
    labelled_fraction: Optional[float] = field(
        default=None,
        metadata={"help": "With data.unlabeled_file / data.augmentation: the labelled share of every distillation "
                          "batch, in (0, 1) (round(fraction * batch) labelled rows, the rest unlabelled). Default: "
                          "the train set's own share, shuffled."},
    )
    cache_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Where tokenized splits and teacher outputs are cached (default: output_dir/cache); runs "
                          "on the same data and teacher may share one (files are keyed by their inputs)."},
    )

    def __post_init__(self) -> None:
        if self.task not in DATA_TASKS:
            raise ConfigError(f"data.task {checks.shown(self.task)} is not supported; use one of {list(DATA_TASKS)}."
                              + did_you_mean(str(self.task), DATA_TASKS))
        checks.integer(self.max_length, "data.max_length", minimum=MIN_MAX_LENGTH, maximum=MAX_SEQ_LENGTH,
                       hint=f" (at least {MIN_MAX_LENGTH}: two text tokens plus the [CLS]/[SEP] special tokens, "
                            "three for sentence pairs)")
        checks.positive_int(self.max_train_samples, "data.max_train_samples", optional=True)
        checks.positive_int(self.max_eval_samples, "data.max_eval_samples", optional=True)
        checks.non_empty_str(self.unlabeled_file, "data.unlabeled_file", optional=True)
        checks.non_empty_str(self.cache_dir, "data.cache_dir", optional=True)
        if self.cache_dir is not None and os.path.exists(self.cache_dir) and not os.path.isdir(self.cache_dir):
            raise ConfigError(f"data.cache_dir {checks.shown(self.cache_dir)} is a file; give a directory (it is "
                              "created when missing) or remove the key.")
        if self.augmentation is not None:
            self.augmentation = AugmentationArguments.from_value(self.augmentation)
        share = self.labelled_fraction
        if share is not None and not (checks.is_finite_number(share) and 0 < share < 1):
            raise ConfigError(f"data.labelled_fraction must be a share in (0, 1) or null, got {checks.shown(share)}.")
        if self.labelled_fraction is not None and self.unlabeled_file is None and self.augmentation is None:
            raise ConfigError("data.labelled_fraction shares batches between labelled and unlabelled rows: set "
                              "data.unlabeled_file or data.augmentation, or remove it.")
        for key in ("unlabeled_file", "augmentation"):
            if getattr(self, key) is not None and self.task != "text-classification":
                raise ConfigError(f"data.{key} applies to the text-classification task only (data.task is "
                                  f"{self.task!r}); remove it.")
        size = self.validation_split_size
        if size is not None:
            if not checks.is_finite_number(size) or size <= 0 or (
                    isinstance(size, float) and not size.is_integer() and size >= 1):
                raise ConfigError("data.validation_split_size must be a share in (0, 1) or a positive count of "
                                  f"examples, got {checks.shown(size)}.")


@dataclass
class EvaluationArguments:
    """How each student is evaluated: task metrics and the latency protocol.

    Args:
        metrics: metric names: shipped (accuracy, f1, mlm_accuracy), or scripts (a path, a Hub name) when
            ``trust_remote_code`` allows them.
        trust_remote_code: allow metric scripts that are not shipped with the package (a local folder or a Hub
            metric), which ``evaluate.load`` imports and runs.
        latency_batch_size: batch size of the latency measurement.
        latency_seq_length: sequence length of the measurement (default: ``data.max_length``).
        latency_num_threads: CPU threads during the measurement.
        latency_warmup: warm-up forwards before timing.
        latency_repeats: timed samples.
        latency_estimator: ``min`` (the fastest sample, default: robust to other processes on the machine) or
            ``median``: the latency reported and optimised.
        latency_rounds: the samples are taken in this many rounds, 0.5 s apart (default 3).
        latency_runtime: runtime the latency objective is measured in, for students and teacher alike:
            ``pytorch``, ``onnxruntime`` or ``onnxruntime-int8`` (default: ``onnxruntime`` when installed, else
            ``pytorch``; the run's deployment plan checks what is installed).
        export_onnx: ``best`` (or true): the best student to ``best_model/onnx/``; ``front``: also every student of
            the Pareto front to ``<its trial model dir>/onnx/``; ``none`` (or false): no export. Default: ``best`` when
            the onnx extra is installed.
    """

    metrics: list[str] = field(
        default_factory=lambda: ["accuracy"],
        metadata={"help": "Metric names: shipped (accuracy, f1, mlm_accuracy), or paths/Hub names with "
                          "trust_remote_code."},
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Allow metric scripts that do not ship with the package (a local folder or a Hub metric): "
                          "evaluate.load imports and runs their code. Off by default."},
    )
    latency_batch_size: int = field(
        default=1, metadata={"help": f"Batch size of the latency measurement (1..{MAX_LATENCY_BATCH_SIZE})."})
    latency_seq_length: Optional[int] = field(
        default=None, metadata={"help": f"Sequence length (default: data.max_length; at most {MAX_SEQ_LENGTH})."})
    latency_num_threads: int = field(
        default=1, metadata={"help": f"CPU threads during the latency measurement (1..{MAX_LATENCY_THREADS})."})
    latency_warmup: int = field(
        default=10, metadata={"help": f"Warm-up forwards before timing (0..{MAX_LATENCY_WARMUP})."})
    latency_repeats: int = field(
        default=30, metadata={"help": f"Timed samples (1..{MAX_LATENCY_REPEATS})."})
    latency_estimator: str = field(
        default="min",
        metadata={"help": "The latency reported and optimised: 'min' (the fastest sample: other processes only add "
                          "time, so it ranks models the same on a busy machine) or 'median'."})
    latency_rounds: int = field(
        default=3, metadata={"help": f"Rounds the samples are taken in, 0.5 s apart (1..{MAX_LATENCY_ROUNDS}; at most "
                                     "latency_repeats)."})
    latency_runtime: Optional[str] = field(
        default=None,
        metadata={"help": "Runtime the latency objective is measured in, for students and teacher alike: 'pytorch' "
                          "(eager), 'onnxruntime' (ONNX fp32) or 'onnxruntime-int8' (ONNX, dynamic int8 weights). "
                          "Default: 'onnxruntime' when the onnx extra is installed, else 'pytorch'."},
    )
    export_onnx: Optional[Union[bool, str]] = field(
        default=None,
        metadata={"help": "ONNX export (model.onnx, model_int8.onnx, each checked against PyTorch): 'best' (or true): "
                          "the best student to best_model/onnx/; 'front': also every Pareto-front student to "
                          "<trial model dir>/onnx/; 'none' (or false): no export. Default: 'best' when the onnx "
                          "extra is installed."},
    )

    def __post_init__(self) -> None:
        where = "auto_distillation.evaluation"
        if not isinstance(self.metrics, list) or not self.metrics or not all(
                isinstance(m, str) and m for m in self.metrics):
            raise ConfigError(f"{where}.metrics must be a non-empty list of metric names, "
                              f"got {checks.shown(self.metrics)}.")
        checks.boolean(self.trust_remote_code, f"{where}.trust_remote_code")
        checks.positive_int(self.latency_batch_size, f"{where}.latency_batch_size", maximum=MAX_LATENCY_BATCH_SIZE)
        checks.positive_int(self.latency_seq_length, f"{where}.latency_seq_length", maximum=MAX_SEQ_LENGTH,
                            optional=True)
        checks.positive_int(self.latency_num_threads, f"{where}.latency_num_threads", maximum=MAX_LATENCY_THREADS)
        checks.integer(self.latency_warmup, f"{where}.latency_warmup", minimum=0, maximum=MAX_LATENCY_WARMUP)
        checks.positive_int(self.latency_repeats, f"{where}.latency_repeats", maximum=MAX_LATENCY_REPEATS)
        if self.latency_estimator not in LATENCY_ESTIMATORS:
            hint = did_you_mean(str(self.latency_estimator), LATENCY_ESTIMATORS)
            raise ConfigError(f"{where}.latency_estimator is {checks.shown(self.latency_estimator)}; choose one of "
                              f"{list(LATENCY_ESTIMATORS)}.{hint}")
        checks.positive_int(self.latency_rounds, f"{where}.latency_rounds", maximum=MAX_LATENCY_ROUNDS)
        if self.latency_rounds > self.latency_repeats:
            raise ConfigError(f"{where}.latency_rounds ({self.latency_rounds}) is more than latency_repeats "
                              f"({self.latency_repeats}): every round needs a sample; lower latency_rounds.")
        if self.latency_runtime is not None and self.latency_runtime not in LATENCY_RUNTIMES:
            raise ConfigError(f"{where}.latency_runtime is {checks.shown(self.latency_runtime)}; choose one of "
                              f"{list(LATENCY_RUNTIMES)}.{did_you_mean(str(self.latency_runtime), LATENCY_RUNTIMES)}")
        if self.export_onnx is not None and not isinstance(self.export_onnx, bool) and (
                self.export_onnx not in ONNX_EXPORT_SCOPES):
            raise ConfigError(f"{where}.export_onnx is {checks.shown(self.export_onnx)}; choose one of "
                              f"{list(ONNX_EXPORT_SCOPES)} (true is 'best', false is 'none')."
                              f"{did_you_mean(str(self.export_onnx), ONNX_EXPORT_SCOPES)}")


@dataclass
class BaselineArguments:
    """The best architecture trained on labels only, so that the value of distillation is visible.

    Args:
        enabled: train the baseline after the search.
        train_steps: steps of the baseline (default: the distillation's total).
    """

    enabled: bool = field(default=True, metadata={"help": "Train the baseline after the search."})
    train_steps: Optional[int] = field(default=None, metadata={"help": "Steps (default: the distillation's total)."})

    def __post_init__(self) -> None:
        checks.boolean(self.enabled, "baseline.enabled")
        checks.positive_int(self.train_steps, "baseline.train_steps", optional=True, what="integer number of steps")
