"""Rematerialisation: recompute a module's activations in the backward pass.

`config.model.remat` chooses which modules are wrapped in `nn.remat`
(jax.checkpoint): 'none', 'stages' (each stage of a backbone whose spec allows
it), 'mid_blocks' (each mid-level block, CLCA by default) or 'all' (both);
older workdirs' 'clca' is 'mid_blocks' (workdir/compatibility.py).
`config.model.remat_policy` names the `jax.checkpoint_policies` entry that says which intermediates of a wrapped
module are still saved: 'nothing_saveable' keeps only its inputs (least
memory, one extra forward), 'dots_with_no_batch_dims_saveable' /
'dots_saveable' keep matmul/conv outputs and recompute the cheap elementwise
ops (BatchNorm, ReLU) between them.
"""
import flax.linen as nn
import jax

MODES = ('none', 'stages', 'mid_blocks', 'all')
POLICIES = ('nothing_saveable', 'dots_saveable', 'dots_with_no_batch_dims_saveable',
            'everything_saveable')


def wrap(module_cls: type[nn.Module], policy: str, static_argnums: tuple[int, ...]
         ) -> type[nn.Module]:
  """`module_cls` under nn.remat with the named policy; argnums count `self` as 0."""
  return nn.remat(module_cls, policy=getattr(jax.checkpoint_policies, policy),
                  static_argnums=static_argnums)


def remats_stages(mode: str) -> bool:
  return mode in ('stages', 'all')


def remats_mid_blocks(mode: str) -> bool:
  return mode in ('mid_blocks', 'all')
