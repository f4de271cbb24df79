"""Training diagnostics: what each module learns, logged beside the loss.

Per-module gradient norms, the CLSA gates' statistics and the scale of CLCA's
zero-initialised BatchNorm: the figures that `docs/ablation_study.md` used to
find why CLAN trained worse than its parts. All are cheap reductions of
arrays the train step already has.
"""
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax

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
          + [f'{stat}_{m}' for m in modules if m.startswith('clsa_')
             for stat in ('gate_mean', 'gate_std')]
          + [f'bn_scale_{m}' for m in modules if m.startswith('clca_')])


def compute(params: Mapping[str, Any], grads: Mapping[str, Any],
            intermediates: Mapping[str, Any]) -> dict[str, jax.Array]:
  """Scalar diagnostics of one step.

  Args:
    params, grads: the model's parameters and their gradients.
    intermediates: the model's sown intermediates (CLSA's 'attention',
      [B, H_s, W_s, 1] in (0, 1)).

  Returns:
    {'grad_norm_<module>': global norm of that module's gradient,
     'gate_mean_<clsa>', 'gate_std_<clsa>': of its attention map,
     'bn_scale_<clca>': mean |scale| of its output BatchNorm (0 at init:
     the block is then the identity)}.
  """
  out = {f'grad_norm_{m}': optax.global_norm(leaves)
         for m, leaves in _grouped(grads).items()}
  for module, values in intermediates.items():
    if module.startswith('clsa_'):
      gate = values['attention'][0].astype(jnp.float32)
      out[f'gate_mean_{module}'] = jnp.mean(gate)
      out[f'gate_std_{module}'] = jnp.std(gate)
  for module, values in params.items():
    if module.startswith('clca_'):
      out[f'bn_scale_{module}'] = jnp.mean(jnp.abs(values['bn_y']['scale']))
  return out
