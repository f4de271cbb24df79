"""The CLAN loss: one cross-entropy per classifier branch, summed with weights."""
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Per-example cross-entropy in float32: logits [B, K], labels [B] -> [B]."""
  num_classes = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing)
  return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def clan_loss(branches: Mapping[str, jax.Array], labels: jax.Array, *,
              branch_weights: Mapping[str, float],
              label_smoothing: float = 0.0) -> tuple[jax.Array, dict[str, jax.Array]]:
  """sum_b w_b * mean_i CE(branches[b][i], labels[i]), the paper's loss.

  Args:
    branches: {branch name: logits [B, K]}.
    labels: [B] integer classes.
    branch_weights: {branch name: weight}; a branch not listed weighs 1.

  Returns:
    (the scalar loss, {branch name: that branch's mean cross-entropy}).
  """
  per_branch = {name: jnp.mean(cross_entropy(logits, labels, label_smoothing))
                for name, logits in branches.items()}
  total = sum(branch_weights.get(name, 1.0) * loss for name, loss in per_branch.items())
  return total, per_branch
