"""The block registry: CLAN's mid-level and top-level blocks by config name.

A mid-level block (config.model.mid_block) refines each mid-level map with the
top-level one: (L_s [B, H_s, W_s, C_s], L_N [B, H_g, W_g, C_g], train) -> L̂_s
[B, H_s, W_s, C_s]. A top-level block (config.model.top_block) makes one
refined top-level map per tap: (L̂_s, L_N, train) -> [B, H_g, W_g, C]; CLAN
joins them into L̂_N. A block's options are its config group, named as the
block (config.model.<name>); CLAN names each instance '<name>_<tap>'.

Adding a block: its file beside this one, declaring its BlockSpec
(models/block_spec.py), one line here, and its options group in
configs/base.py.
"""
from collections.abc import Iterator, Mapping

from clan_jax.models import clca, clsa
from clan_jax.models.block_spec import BlockSpec

MID_LEVEL_BLOCKS: dict[str, BlockSpec] = {'clca': clca.SPEC}
TOP_LEVEL_BLOCKS: dict[str, BlockSpec] = {'clsa': clsa.SPEC}


def registered() -> dict[str, BlockSpec]:
  """Every registered block, mid- and top-level, by name."""
  return {**MID_LEVEL_BLOCKS, **TOP_LEVEL_BLOCKS}


def instances(tree: Mapping[str, object]) -> Iterator[tuple[str, BlockSpec]]:
  """(module name, its block's spec) for each top-level module of `tree` that is a block's."""
  specs = registered()
  names = sorted(specs, key=len, reverse=True)  # 'se_v2_layer2' is not block 'se''s
  for module in tree:
    name = next((name for name in names if module.startswith(f'{name}_')), None)
    if name is not None:
      yield module, specs[name]
