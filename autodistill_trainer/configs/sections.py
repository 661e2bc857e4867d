"""Recipe sections outside ``auto_distillation``'s design keys: model, teacher, data, evaluation, baseline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union


@dataclass
class ModelArguments:
    """The student: its class and base config (the search sets the architecture fields on top)."""

    name: str = field(default="autodistill", metadata={"help": "Name of the run (the design's model.name)."})
    framework: str = field(default="pytorch", metadata={"help": "Only 'pytorch' is supported."})
    student_class: str = field(
        default="MobileBertForSequenceClassification",
        metadata={"help": "A transformers model class (or Auto class) name for the students."},
    )
    base_config: Optional[Union[dict, str]] = field(
        default=None,
        metadata={"help": "Overrides on the built-in MobileBERT base config (a mapping), or a config path/Hub name."},
    )
    init_embeddings_from_teacher: bool = field(
        default=True,
        metadata={"help": "Initialise student word embeddings from the teacher's (PCA to the student's width)."},
    )
    license: Optional[str] = field(
        default=None,
        metadata={"help": "License of the student in the model card metadata (e.g. apache-2.0); default: the shipped "
                          "demo teacher's license, else none."},
    )


@dataclass
class TeacherArguments:
    """The teacher: a fine-tuned model, or a pretrained encoder that the CLI fine-tunes first."""

    model_name_or_path: Optional[str] = field(default=None, metadata={"help": "Path or Hub name of a fine-tuned teacher."})
    pretrained_encoder: Optional[str] = field(
        default=None,
        metadata={"help": "Encoder to fine-tune as the teacher ('offline:all-MiniLM-L6-v2' uses the local wheel)."},
    )
    finetune: dict = field(default_factory=dict, metadata={"help": "TrainingArguments overrides for the teacher fine-tuning."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub (off by default)."})
    dtype: Optional[str] = field(default=None, metadata={"help": "Teacher dtype for distillation (float16, bfloat16)."})
    cache_outputs: bool = field(
        default=True, metadata={"help": "Compute the teacher outputs the mappings need once, on disk (fp16), and reuse them."}
    )
    cache_max_gb: float = field(default=2.0, metadata={"help": "Size budget of one cached teacher feature set (GB)."})


@dataclass
class DataArguments:
    """The data: text classification (default) or a text corpus for MLM + next-sentence pretraining distillation."""

    task: str = field(
        default="text-classification",
        metadata={"help": "'text-classification' (labelled texts; sequence-classification students) or 'pretraining' "
                          "(a text corpus: MLM + next-sentence pairs of consecutive lines; *ForPreTraining students "
                          "and teacher, metric mlm_accuracy)."},
    )
    dataset_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset name, or 'rotten_tomatoes_demo'."})
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset config (e.g. 'sst2')."})
    train_file: Optional[str] = field(default=None, metadata={"help": "Local csv/json training file."})
    validation_file: Optional[str] = field(default=None, metadata={"help": "Local csv/json validation file."})
    text_column: str = field(default="text", metadata={"help": "Column with the text (pretraining: one line/segment per row)."})
    text_pair_column: Optional[str] = field(default=None, metadata={"help": "Optional second text column."})
    label_column: str = field(default="label", metadata={"help": "Column with the labels (int or string)."})
    max_length: int = field(default=128, metadata={"help": "Maximum tokens per example."})
    validation_split_size: Optional[float] = field(default=None, metadata={"help": "Split this share/count off train when there is no validation set."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the training set (for quick runs)."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the validation set."})


@dataclass
class EvaluationArguments:
    """How each student is evaluated: task metrics and the latency protocol."""

    metrics: list[str] = field(default_factory=lambda: ["accuracy"], metadata={"help": "Metric names (shipped or evaluate Hub names)."})
    latency_batch_size: int = field(default=1, metadata={"help": "Batch size of the latency measurement."})
    latency_seq_length: Optional[int] = field(default=None, metadata={"help": "Sequence length (default: data.max_length)."})
    latency_num_threads: int = field(default=1, metadata={"help": "CPU threads during the latency measurement."})
    latency_warmup: int = field(default=10, metadata={"help": "Warm-up forwards before timing."})
    latency_repeats: int = field(default=30, metadata={"help": "Timed samples; the median is reported."})
    latency_runtime: Optional[str] = field(
        default=None,
        metadata={"help": "Runtime the latency objective is measured in, for students and teacher alike: 'pytorch' "
                          "(eager), 'onnxruntime' (ONNX fp32) or 'onnxruntime-int8' (ONNX, dynamic int8 weights). "
                          "Default: 'onnxruntime' when the onnx extra is installed, else 'pytorch'."},
    )
    export_onnx: Optional[bool] = field(
        default=None,
        metadata={"help": "Export the best student to best_model/onnx/ (model.onnx, model_int8.onnx), each checked "
                          "against PyTorch. Default: true when the onnx extra is installed."},
    )


@dataclass
class BaselineArguments:
    """The best architecture trained on labels only, so that the value of distillation is visible."""

    enabled: bool = field(default=True, metadata={"help": "Train the baseline after the search."})
    train_steps: Optional[int] = field(default=None, metadata={"help": "Steps (default: the distillation's total)."})
