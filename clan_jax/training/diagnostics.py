"""Training diagnostics: what each module learns, logged beside the loss.

Per-module gradient norms, and each block's own statistics (its
BlockSpec.diagnostics: CLSA's gate mean and spread, the scale of CLCA's
zero-initialised BatchNorm): the figures that `docs/ablation_study.md` used to
find why CLAN trained worse than its parts. All are cheap reductions of
arrays the train step already has.
"""
from collections.abc import Mapping
from typing import Any

import jax
import optax

from clan_jax.models import blocks

BACKBONE = 'backbone'


def _module(path: tuple[str, ...]) -> str:
  """'backbone_layer2' for the backbone's stages, else the top-level module."""
  return f'{path[0]}_{path[1]}' if path[0] == BACKBONE else path[0]


def _grouped(tree: Mapping[str, Any]) -> dict[str, list[jax.Array]]:
  groups: dict[str, list[jax.Array]] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    keys = tuple(str(getattr(k, 'key', k)) for k in path)
    groups.setdefault(_module(keys), []).append(leaf)
  return groups


def names(params: Mapping[str, Any]) -> list[str]:
  """The names `compute` returns for a model with these params."""
  modules = sorted(_grouped(params))
  return ([f'grad_norm_{m}' for m in modules]
          + [f'{stat}_{module}' for module, spec in blocks.instances(sorted(params))
             for stat in spec.diagnostic_names])


def compute(params: Mapping[str, Any], grads: Mapping[str, Any],
            intermediates: Mapping[str, Any]) -> dict[str, jax.Array]:
  """Scalar diagnostics of one step.

  Args:
    params, grads: the model's parameters and their gradients.
    intermediates: the model's sown intermediates, {module: {name: (value,)}}.

  Returns:
    {'grad_norm_<module>': global norm of that module's gradient,
     '<statistic>_<block instance>': each block's own diagnostics}.
  """
  out = {f'grad_norm_{m}': optax.global_norm(leaves)
         for m, leaves in _grouped(grads).items()}
  for module, spec in blocks.instances(params):
    if spec.diagnostics is not None:
      stats = spec.diagnostics(params[module], intermediates.get(module, {}))
      out.update({f'{stat}_{module}': value for stat, value in stats.items()})
  return out
