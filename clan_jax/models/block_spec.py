"""What a block declares about itself, in its own file, for the registry (models/blocks.py).

CLAN, config validation, training diagnostics, attention maps and workdir
loading know a block only through its BlockSpec, so a new block changes none
of them.
"""
from collections.abc import Callable, Mapping, Sequence
import dataclasses
from typing import Any

import flax.linen as nn

from clan_jax.config_rules import Rule

Fraction = tuple[float, float]  # (x, y) as fractions of the model's input, in [0, 1)


@dataclasses.dataclass(frozen=True)
class BlockSpec:
  """One registered block; its options are config.model.<registry name>.

  Attributes:
    module: the Flax module. Mid-level: (L_s [B, H_s, W_s, C_s], L_N
      [B, H_g, W_g, C_g], train) -> L̂_s, shaped as L_s; top-level: (L̂_s, L_N,
      train) -> [B, H_g, W_g, C]. Its attributes are its options plus dtype and
      param_dtype.
    rules: one per field of its options group, named within the group.
    diagnostic_names: the statistics `diagnostics` returns.
    diagnostics: (the params of one instance, what it sowed) -> {statistic:
      scalar}, logged beside the loss as '<statistic>_<module name>'.
    attention_map: (what one instance sowed, its options, one query fraction
      per image) -> (maps float32 [B, H_s, W_s], the query's (row, column) on
      that grid per image, or None when the map has no query); None: the block
      draws no map.
    map_title: how attention pictures name its map; None: the registry name
      in capitals.
    compute_only_fields: options that change how it computes, not its
      variables: a run may resume with others.
    added_fields: options added since workdirs were first written, with the
      values that rebuild those workdirs' models.
    renamed_values: {option: {old value: its name now}}.
  """

  module: type[nn.Module]
  rules: Sequence[Rule]
  diagnostic_names: Sequence[str] = ()
  diagnostics: Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, Any]] | None = None
  attention_map: Callable[[Mapping[str, Any], Mapping[str, Any], Sequence[Fraction]],
                          tuple[Any, list[tuple[int, int]] | None]] | None = None
  map_title: str | None = None
  compute_only_fields: Sequence[str] = ()
  added_fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  renamed_values: Mapping[str, Mapping[Any, Any]] = dataclasses.field(default_factory=dict)
