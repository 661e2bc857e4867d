"""Built-in model builder and the validity constraints of an architecture search space.

An *architecture* is a flat dict of config fields (e.g. ``{"hidden_size": 128, "num_attention_heads": 2}``)
applied on top of a base config. :func:`check_architecture` rejects combinations that cannot run, with the
reason, so the search can skip them without training (MobileBERT itself only fails at forward time).
"""

from __future__ import annotations

import copy
import itertools
import logging
from typing import Any, Callable, Iterable, Mapping, Sequence

from transformers import AutoConfig, MobileBertConfig, PretrainedConfig, set_seed
from transformers.models.auto.auto_factory import _BaseAutoModelClass

from .configs.kd_knobs import KD_KNOBS, split_knobs
from .errors import ConfigError, InvalidArchitectureError, did_you_mean
from .teacher import resolve_model_path

logger = logging.getLogger(__name__)

__all__ = [
    "check_architecture",
    "apply_architecture",
    "build_model",
    "default_mobilebert_base_config",
    "student_base_config",
    "enumerate_valid_architectures",
]

#: Base-config fields that :func:`student_base_config` derives from the tokenizer, the labels and
#: ``data.max_length``: a recipe's ``model.base_config`` cannot set them.
DERIVED_BASE_CONFIG_KEYS: tuple[str, ...] = (
    "num_labels", "vocab_size", "pad_token_id", "max_position_embeddings", "id2label", "label2id",
)

# Integer size fields that must be >= 1 when present on a config.
_POSITIVE_FIELDS = (
    "hidden_size",
    "intra_bottleneck_size",
    "true_hidden_size",
    "num_attention_heads",
    "intermediate_size",
    "num_feedforward_networks",
    "num_hidden_layers",
    "embedding_size",
    "vocab_size",
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_positive(config: PretrainedConfig) -> None:
    for name in _POSITIVE_FIELDS:
        if name not in _config_fields(config):
            continue
        value = getattr(config, name)
        if value is None and name == "embedding_size":
            continue
        if not _is_int(value) or value < 1:
            raise InvalidArchitectureError(f"{name} must be a positive integer, got {value!r}.")


def _mobilebert_attention_widths(config: PretrainedConfig) -> dict[str, int]:
    """Input widths of query/key/value and of the attention residual, as MobileBERT wires them.

    From ``transformers.models.mobilebert.modeling_mobilebert`` (``Bottleneck.forward``/``MobileBertLayer``):

    * use_bottleneck and use_bottleneck_attention: q, k, v and residual are the bottleneck output
      (``intra_bottleneck_size`` wide);
    * use_bottleneck and key_query_shared_bottleneck: q, k come from a second bottleneck
      (``intra_bottleneck_size``), v is the layer input (``hidden_size``), the residual the bottleneck;
    * use_bottleneck only: q, k, v are the layer input (``hidden_size``), the residual the bottleneck;
    * no bottleneck: everything is ``hidden_size`` wide.
    """
    hidden, intra = config.hidden_size, config.intra_bottleneck_size
    if config.use_bottleneck:
        if config.use_bottleneck_attention:
            return {"query": intra, "key": intra, "value": intra, "residual": intra}
        if config.key_query_shared_bottleneck:
            return {"query": intra, "key": intra, "value": hidden, "residual": intra}
        return {"query": hidden, "key": hidden, "value": hidden, "residual": intra}
    return {"query": hidden, "key": hidden, "value": hidden, "residual": hidden}


def _check_mobilebert(config: PretrainedConfig) -> None:
    true_hidden = config.true_hidden_size
    heads = config.num_attention_heads
    widths = _mobilebert_attention_widths(config)
    # query/key Linear layers are built with in_features=true_hidden_size; the value layer with
    # true_hidden_size if use_bottleneck_attention else hidden_size; the attention output projection
    # (true_hidden_size -> true_hidden_size) adds the residual, so every width below must equal true_hidden_size.
    expected = {
        "query": true_hidden,
        "key": true_hidden,
        "value": true_hidden if config.use_bottleneck_attention else config.hidden_size,
        "residual": true_hidden,
    }
    for name, width in widths.items():
        if width != expected[name]:
            raise InvalidArchitectureError(
                f"MobileBERT attention {name} input is {width} wide but its layer expects {expected[name]} "
                f"(hidden_size={config.hidden_size}, intra_bottleneck_size={config.intra_bottleneck_size}, "
                f"true_hidden_size={true_hidden}, use_bottleneck={config.use_bottleneck}, "
                f"use_bottleneck_attention={config.use_bottleneck_attention}, "
                f"key_query_shared_bottleneck={config.key_query_shared_bottleneck}): true_hidden_size must equal "
                f"{'intra_bottleneck_size' if config.use_bottleneck else 'hidden_size'}, and a bottleneck without "
                f"bottleneck attention or a shared key/query bottleneck needs hidden_size == intra_bottleneck_size."
            )
    if true_hidden % heads != 0:
        raise InvalidArchitectureError(
            f"num_attention_heads={heads} does not divide the MobileBERT attention width true_hidden_size="
            f"{true_hidden} (= {'intra_bottleneck_size' if config.use_bottleneck else 'hidden_size'}); "
            f"valid head counts: {[h for h in range(1, true_hidden + 1) if true_hidden % h == 0]}."
        )


def _check_bert_like(config: PretrainedConfig) -> None:
    hidden, heads = config.hidden_size, config.num_attention_heads
    if hidden % heads != 0:
        raise InvalidArchitectureError(
            f"num_attention_heads={heads} does not divide hidden_size={hidden} ({config.model_type}); "
            f"valid head counts: {[h for h in range(1, hidden + 1) if hidden % h == 0]}."
        )


def check_architecture(config: PretrainedConfig) -> None:
    """Raise :class:`InvalidArchitectureError` with a precise reason if ``config`` cannot run.

    Checks: size fields (hidden_size, intra_bottleneck_size, true_hidden_size, num_attention_heads,
    intermediate_size, num_feedforward_networks, num_hidden_layers, embedding_size) are positive integers;
    for MobileBERT, the widths feeding query/key/value/residual agree with ``true_hidden_size`` (see
    :func:`_mobilebert_attention_widths`) and ``num_attention_heads`` divides ``true_hidden_size``; for other
    configs with ``hidden_size`` and ``num_attention_heads`` (BERT and friends), heads divide ``hidden_size``.
    """
    _check_positive(config)
    if getattr(config, "model_type", None) == "mobilebert":
        _check_mobilebert(config)
    elif hasattr(config, "hidden_size") and hasattr(config, "num_attention_heads"):
        _check_bert_like(config)


def _config_fields(config: PretrainedConfig) -> set[str]:
    fields = set(config.to_dict())
    fields.update(getattr(config, "attribute_map", {}) or {})
    return fields


def apply_architecture(base_config: PretrainedConfig, arch: Mapping[str, Any]) -> PretrainedConfig:
    """A deep copy of ``base_config`` with the fields of ``arch`` set, validated by :func:`check_architecture`.

    Unknown fields raise :class:`ConfigError` with the closest config attributes.

    MobileBERT's ``true_hidden_size`` is derived, as ``MobileBertConfig`` does at construction (setting
    attributes afterwards does not recompute it): ``intra_bottleneck_size`` when ``use_bottleneck`` is on,
    else ``hidden_size``. ``arch`` may give ``true_hidden_size``: with the bottleneck on and no
    ``intra_bottleneck_size`` in ``arch``, it sets ``intra_bottleneck_size`` too (it is the same width);
    a ``true_hidden_size`` that disagrees with the derived width raises :class:`InvalidArchitectureError`.
    """
    config = copy.deepcopy(base_config)
    known = _config_fields(config)
    arch, _ = split_knobs(arch)  # KD knobs (temperature, kd_weight, flash_share) configure stages, not the config
    for key in arch:
        if key not in known:
            raise ConfigError(
                f"Unknown architecture field {key!r} for {type(config).__name__}."
                + did_you_mean(key, sorted(known) + sorted(KD_KNOBS))
            )
    for key, value in arch.items():
        setattr(config, key, value)

    if getattr(config, "model_type", None) == "mobilebert":
        derived_from = "intra_bottleneck_size" if config.use_bottleneck else "hidden_size"
        if "true_hidden_size" in arch:
            if config.use_bottleneck and "intra_bottleneck_size" not in arch:
                config.intra_bottleneck_size = arch["true_hidden_size"]
            derived = getattr(config, derived_from)
            if arch["true_hidden_size"] != derived:
                raise InvalidArchitectureError(
                    f"true_hidden_size={arch['true_hidden_size']} disagrees with {derived_from}={derived}; "
                    f"MobileBERT requires true_hidden_size == {derived_from} (use_bottleneck={config.use_bottleneck})."
                )
        config.true_hidden_size = getattr(config, derived_from)
    check_architecture(config)
    return config


def _is_auto_class(model_cls: Any) -> bool:
    return isinstance(model_cls, type) and issubclass(model_cls, _BaseAutoModelClass)


def build_model(
    model_cls: type | Callable[[PretrainedConfig], Any],
    base_config: PretrainedConfig,
    arch: Mapping[str, Any],
    seed: int | None = None,
    attn_implementation: str | None = None,
):
    """Build a freshly initialised model of architecture ``arch``.

    Steps: :func:`apply_architecture`; ``attn_implementation`` (e.g. ``"eager"``, needed for attention
    maps) set on the config when given; ``transformers.set_seed(seed)`` when ``seed`` is given (so a trial's
    initialization is reproducible); then ``model_cls.from_config(config)`` for Auto classes, else
    ``model_cls(config)``. Models with an MLM head additionally need ``embedding_size <= hidden_size``.
    """
    config = apply_architecture(base_config, arch)
    name = getattr(model_cls, "__name__", "")
    if getattr(config, "model_type", None) == "mobilebert" and ("MaskedLM" in name or "PreTraining" in name):
        if config.embedding_size > config.hidden_size:
            raise InvalidArchitectureError(
                f"{name} needs embedding_size <= hidden_size (its LM head projects to hidden_size - embedding_size),"
                f" got embedding_size={config.embedding_size}, hidden_size={config.hidden_size}."
            )
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    if seed is not None:
        set_seed(seed)
    if _is_auto_class(model_cls):
        model = model_cls.from_config(config)
    else:
        model = model_cls(config)
    if attn_implementation is not None and hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(attn_implementation)
    logger.debug("built %s with %s", type(model).__name__, dict(arch))
    return model


def default_mobilebert_base_config(
    num_labels: int = 2,
    vocab_size: int = 30522,
    max_position_embeddings: int = 512,
    pad_token_id: int = 0,
    **overrides: Any,
) -> PretrainedConfig:
    """A small MobileBERT base config for task distillation from random init on CPU.

    Choices (any can be overridden by keyword):

    * ``vocab_size=30522``: the uncased BERT WordPiece vocabulary (shared with all-MiniLM-L6-v2 teachers),
      so the teacher's tokenizer feeds the student.
    * ``hidden_size=128, intra_bottleneck_size=64, num_attention_heads=2, intermediate_size=256,
      num_feedforward_networks=2, num_hidden_layers=6``: the student measured in ARCHITECTURE.md
      (~2.7M parameters, ~2 ms at batch 1 x 64 tokens on one thread); a search overrides these.
    * ``embedding_size=64``: word embeddings dominate the parameter count (vocab x embedding_size);
      64 keeps them small and matches a 64-dim PCA of the teacher's embeddings if initialised from it.
    * ``trigram_input=True``: MobileBERT's default 3-gram convolution from embedding_size to hidden_size.
    * ``use_bottleneck=True, key_query_shared_bottleneck=True, use_bottleneck_attention=False``: MobileBERT's
      defaults; attention runs on ``true_hidden_size = intra_bottleneck_size``.
    * ``normalization_type="layer_norm"``: the default ``"no_norm"`` from random init learned nothing on
      the offline demo (stuck at the majority class); NoNorm needs layer-wise transfer to train.
    * ``hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1``: usual BERT fine-tuning regularisation
      (MobileBERT defaults hidden dropout to 0.0).
    * ``hidden_act="relu"``: MobileBERT's default (cheaper than GELU on CPU).
    * ``classifier_activation=True``: tanh pooler over [CLS], like BERT; ``classifier_dropout=None`` falls
      back to ``hidden_dropout_prob``.
    * ``attn_implementation="eager"``: attention probabilities are only returned by eager attention,
      which attention-map distillation needs.
    """
    kwargs: dict[str, Any] = dict(
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=pad_token_id,
        num_labels=num_labels,
        hidden_size=128,
        embedding_size=64,
        intra_bottleneck_size=64,
        num_attention_heads=2,
        intermediate_size=256,
        num_feedforward_networks=2,
        num_hidden_layers=6,
        trigram_input=True,
        use_bottleneck=True,
        key_query_shared_bottleneck=True,
        use_bottleneck_attention=False,
        normalization_type="layer_norm",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        hidden_act="relu",
        classifier_activation=True,
        classifier_dropout=None,
        attn_implementation="eager",
    )
    kwargs.update(overrides)
    config = MobileBertConfig(**kwargs)
    check_architecture(config)
    return config


def enumerate_valid_architectures(
    search_space: Mapping[str, Iterable[Any]],
    base_config: PretrainedConfig,
) -> tuple[list[dict[str, Any]], list[tuple[dict[str, Any], str]]]:
    """Split the full grid of ``search_space`` into valid and invalid architectures.

    Returns ``(valid, invalid)``: ``valid`` lists arch dicts in grid order (keys in ``search_space`` order,
    last key varying fastest); ``invalid`` lists ``(arch, reason)``. Unknown keys raise :class:`ConfigError`
    (the whole space is wrong, not one point). Meant for small spaces: it materialises the product.
    """
    keys = list(search_space)
    value_lists = [list(search_space[k]) for k in keys]
    valid: list[dict[str, Any]] = []
    invalid: list[tuple[dict[str, Any], str]] = []
    for values in itertools.product(*value_lists):
        arch = dict(zip(keys, values))
        try:
            apply_architecture(base_config, arch)
        except InvalidArchitectureError as err:
            invalid.append((arch, str(err)))
        else:
            valid.append(arch)
    return valid, invalid


def student_base_config(
    model_args: Any,
    data_args: Any,
    *,
    vocab_size: int | None = None,
    pad_token_id: int | None = None,
    label_names: Sequence[str] | None = None,
) -> PretrainedConfig:
    """The students' base config for a recipe: the one function validation and the CLI both use.

    Args:
        model_args: the recipe's ``model`` section (``ModelArguments``). ``base_config`` is either a dict of
            overrides on :func:`default_mobilebert_base_config`, or the name or path of a config to load
            (``offline:`` names resolved, as for the teacher).
        data_args: the recipe's ``data`` section; ``max_position_embeddings`` is ``max(512, data_args.max_length)``.
        vocab_size: the tokenizer's vocabulary size (default: BERT's 30522).
        pad_token_id: the tokenizer's padding id (default 0).
        label_names: the class names (``num_labels``, ``id2label``, ``label2id``); None: 2 unnamed classes
            (the next-sentence classes of pretraining).

    Raises:
        ConfigError: a base-config key the CLI derives (see ``DERIVED_BASE_CONFIG_KEYS``), a key that is not a
            MobileBertConfig field, an invalid config, or a config name that cannot be read.
    """
    num_labels = len(label_names) if label_names else 2
    if isinstance(model_args.base_config, str):
        source = resolve_model_path(model_args.base_config)
        try:
            config = AutoConfig.from_pretrained(source)
        except (OSError, ValueError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ConfigError(
                f"model.base_config {model_args.base_config!r} cannot be read ({first_line[:200]}); give a local "
                "config directory, an offline: name, or a dict of MobileBERT overrides."
            ) from None
        config.num_labels = num_labels
        if vocab_size is not None:
            config.vocab_size = vocab_size
    else:
        overrides = dict(model_args.base_config or {})
        known = _config_fields(MobileBertConfig()) | {"attn_implementation"}
        for key in overrides:
            if key in DERIVED_BASE_CONFIG_KEYS:
                raise ConfigError(
                    f"model.base_config.{key} is set from the tokenizer, the labels and data.max_length; remove it."
                )
            if key not in known:
                suggestion = did_you_mean(str(key), sorted(known))
                raise ConfigError(f"model.base_config: {key!r} is not a MobileBertConfig field.{suggestion}")
        try:
            config = default_mobilebert_base_config(
                num_labels=num_labels, vocab_size=30522 if vocab_size is None else vocab_size,
                pad_token_id=pad_token_id or 0, max_position_embeddings=max(512, data_args.max_length), **overrides,
            )
        except (InvalidArchitectureError, TypeError, ValueError) as error:
            raise ConfigError(f"model.base_config is not a valid MobileBERT config: {error}") from None
    if label_names:
        config.id2label = dict(enumerate(label_names))
        config.label2id = {name: i for i, name in enumerate(label_names)}
    return config
