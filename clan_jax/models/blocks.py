"""The block registry: CLAN's mid-level and top-level blocks by config name.

A mid-level block (config.model.mid_block) refines each mid-level map with the
top-level one: (L_s [B, H_s, W_s, C_s], L_N [B, H_g, W_g, C_g], train) -> L̂_s
[B, H_s, W_s, C_s]. A top-level block (config.model.top_block) makes one
refined top-level map per tap: (L̂_s, L_N, train) -> [B, H_g, W_g, C]; CLAN
joins them into L̂_N. A block's attributes are its config group, named as the
block (config.model.clca for 'clca'), plus CLAN's dtype and param_dtype.

Adding a block: its file beside this one, one line here, and its config group
in configs/base.py.
"""
import flax.linen as nn

from clan_jax.models import clca, clsa

MID_LEVEL_BLOCKS: dict[str, type[nn.Module]] = {'clca': clca.CLCA}
TOP_LEVEL_BLOCKS: dict[str, type[nn.Module]] = {'clsa': clsa.CLSA}
