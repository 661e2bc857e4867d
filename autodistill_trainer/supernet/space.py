"""The elastic search space of a MobileBERT supernet: which architectures nest in it and what each one's config is.

An architecture is a dict holding a value for every searched field (and nothing else); fields the space does not
search keep the base config's value. Configs are built by :func:`~autodistill_trainer.builders.apply_architecture`,
the function the plain search's builder uses, so a sub-network's config is exactly the config the plain search
builds for the same architecture.

Validity couples only ``hidden_size``, ``intra_bottleneck_size`` and ``num_attention_heads`` (MobileBERT's attention
widths and the heads dividing ``true_hidden_size``, see :func:`~autodistill_trainer.builders.check_architecture`); the
other elastic fields only have to be positive integers. The space therefore enumerates the valid
(hidden, bottleneck, heads) triples once and counts and samples the rest as a product.
"""

from __future__ import annotations

import itertools
import math
import random
from typing import Any, Mapping, Sequence

from transformers import PretrainedConfig

from ..builders import apply_architecture
from ..errors import ConfigError, InvalidArchitectureError, did_you_mean

__all__ = ["ELASTIC_FIELDS", "ElasticSpace"]

#: Config fields a supernet can make elastic: every other field is shared by all its sub-networks.
ELASTIC_FIELDS: tuple[str, ...] = (
    "hidden_size", "intra_bottleneck_size", "num_attention_heads",
    "intermediate_size", "num_feedforward_networks", "num_hidden_layers",
)

#: The fields whose combination decides whether an architecture can run (the attention widths).
_COUPLED = ("hidden_size", "intra_bottleneck_size", "num_attention_heads")


class ElasticSpace:
    """A search space over :data:`ELASTIC_FIELDS` of a MobileBERT base config, nested in one supernet.

    Args:
        base_config: the students' base config (``builders.student_base_config``); a MobileBERT config.
        search_space: ``{field: values}``; each field one of :data:`ELASTIC_FIELDS`, each value a positive integer
            (no duplicates). The order of the values is kept (:attr:`search_space`) for samplers that care.

    Raises:
        ConfigError: a field that is not elastic, an empty or non-integer list of values, a base config that is
            not MobileBERT, or a space whose largest architecture (the supernet) is invalid.
    """

    def __init__(self, base_config: PretrainedConfig, search_space: Mapping[str, Sequence[int]]) -> None:
        if getattr(base_config, "model_type", None) != "mobilebert":
            raise ConfigError(f"a supernet needs a MobileBERT base config, got model_type "
                              f"{getattr(base_config, 'model_type', None)!r}; use model.base_config overrides.")
        if not search_space:
            raise ConfigError("search.search_space is empty: give at least one of " + ", ".join(ELASTIC_FIELDS) + ".")
        space: dict[str, tuple[int, ...]] = {}
        for field, values in search_space.items():
            if field not in ELASTIC_FIELDS:
                raise ConfigError(f"search.search_space.{field} cannot be elastic in a supernet; elastic fields: "
                                  f"{', '.join(ELASTIC_FIELDS)}.{did_you_mean(str(field), ELASTIC_FIELDS)}")
            values = tuple(values) if isinstance(values, Sequence) and not isinstance(values, str) else (values,)
            bad = [v for v in values if not isinstance(v, int) or isinstance(v, bool) or v < 1]
            if not values or bad:
                raise ConfigError(f"search.search_space.{field} must be a non-empty list of positive integers, "
                                  f"got {list(values)!r}.")
            if len(set(values)) != len(values):
                raise ConfigError(f"search.search_space.{field} lists a value twice: {list(values)!r}.")
            space[field] = values
        self.base_config = base_config
        self.search_space: dict[str, tuple[int, ...]] = space
        self._reasons: dict[tuple[int, int, int], str | None] = {}
        self._triples = [t for t in itertools.product(*(self._values(f) for f in _COUPLED)) if self._reason(t) is None]
        self._largest = self._extreme(max)
        self._smallest = self._extreme(min)

    # ------------------------------------------------------------------ fields and values
    @property
    def fields(self) -> tuple[str, ...]:
        """The searched fields, in the order of the search space."""
        return tuple(self.search_space)

    def _values(self, field: str) -> tuple[int, ...]:
        """The values a field takes: the searched ones, or the base config's single value."""
        return self.search_space.get(field) or (int(getattr(self.base_config, field)),)

    def _reason(self, triple: tuple[int, int, int]) -> str | None:
        """Why (hidden_size, intra_bottleneck_size, num_attention_heads) cannot run, or None (memoised)."""
        if triple not in self._reasons:
            try:
                apply_architecture(self.base_config, dict(zip(_COUPLED, triple)))
            except InvalidArchitectureError as error:
                self._reasons[triple] = str(error)
            else:
                self._reasons[triple] = None
        return self._reasons[triple]

    def _triple(self, arch: Mapping[str, int]) -> tuple[int, int, int]:
        return tuple(arch.get(f, self._values(f)[0]) for f in _COUPLED)  # type: ignore[return-value]

    def _extreme(self, pick: Any) -> dict[str, int]:
        """Every field at ``pick`` (max or min) of its values; heads at ``pick`` of those valid with those widths."""
        arch = {f: pick(v) for f, v in self.search_space.items()}
        if "num_attention_heads" in arch:
            heads = [h for h in self.search_space["num_attention_heads"]
                     if self._reason(self._triple({**arch, "num_attention_heads": h})) is None]
            if heads:
                arch["num_attention_heads"] = pick(heads)
        reason = self._reason(self._triple(arch))
        if reason is not None:
            which = "largest" if pick is max else "smallest"
            raise ConfigError(f"search.search_space: the {which} architecture {arch} is invalid ({reason}); every "
                              "field at its extreme must run, since the supernet holds the largest one.")
        return arch

    # ------------------------------------------------------------------ architectures
    def largest(self) -> dict[str, int]:
        """Every searched field at its largest value (``num_attention_heads``: the largest value that divides the
        largest bottleneck): the supernet's own architecture."""
        return dict(self._largest)

    def smallest(self) -> dict[str, int]:
        """Every searched field at its smallest value (``num_attention_heads``: the smallest valid one)."""
        return dict(self._smallest)

    @property
    def size(self) -> int:
        """The number of valid architectures in the space."""
        others = [len(v) for f, v in self.search_space.items() if f not in _COUPLED]
        return len(self._triples) * math.prod(others)

    def sample(self, rng: random.Random) -> dict[str, int]:
        """A valid architecture drawn uniformly from the space with ``rng`` (a pure function of its state)."""
        triple = dict(zip(_COUPLED, rng.choice(self._triples)))
        return {f: triple[f] if f in _COUPLED else rng.choice(v) for f, v in self.search_space.items()}

    def validate(self, arch: Mapping[str, Any]) -> None:
        """Raise :class:`InvalidArchitectureError` naming the field and value unless ``arch`` is in the space.

        ``arch`` must hold exactly the searched fields, each with one of the space's values, and the combination
        must run (e.g. ``num_attention_heads`` dividing ``intra_bottleneck_size``).
        """
        if not isinstance(arch, Mapping):
            raise InvalidArchitectureError(f"an architecture is a dict of {', '.join(self.fields)}, got {arch!r}.")
        for field in arch:
            if field not in self.search_space:
                raise InvalidArchitectureError(f"{field}={arch[field]!r} is not a field this supernet searches "
                                               f"(searched: {', '.join(self.fields)}).")
        for field, values in self.search_space.items():
            if field not in arch:
                raise InvalidArchitectureError(f"the architecture gives no {field} (one of {list(values)}).")
            if arch[field] not in values or isinstance(arch[field], bool):
                raise InvalidArchitectureError(f"{field}={arch[field]!r} is not in the supernet's values "
                                               f"{list(values)}.")
        reason = self._reason(self._triple(arch))
        if reason is not None:
            raise InvalidArchitectureError(reason)

    def __contains__(self, arch: object) -> bool:
        try:
            self.validate(arch)  # type: ignore[arg-type]
        except InvalidArchitectureError:
            return False
        return True

    # ------------------------------------------------------------------ configs
    def sub_config(self, arch: Mapping[str, Any]) -> PretrainedConfig:
        """The config of sub-network ``arch`` (validated): the base config with the architecture's values, built
        by the plain search's :func:`~autodistill_trainer.builders.apply_architecture`."""
        self.validate(arch)
        return apply_architecture(self.base_config, dict(arch))

    def supernet_config(self) -> PretrainedConfig:
        """The supernet's config: the config of :meth:`largest`."""
        return self.sub_config(self._largest)

    def __repr__(self) -> str:
        return f"ElasticSpace({dict(self.search_space)}, size={self.size})"
