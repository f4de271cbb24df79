"""The CLAN classifier: a ResNet backbone, CLCA and CLSA blocks, four branches."""
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from clan_jax.models import remat
from clan_jax.models.clca import CLCA
from clan_jax.models.clsa import CLSA
from clan_jax.models.resnet import create_resnet

Dtype = Any

TOP_BRANCH = 'top'
REFINED_BRANCH = 'refined'
MID_LEVEL_STAGES = ('layer1', 'layer2', 'layer3')
COMBINE_MODES = ('mean_softmax', 'sum_logits')
MERGE_MODES = ('concat', 'sum')


def branch_names(mid_level_taps: Sequence[str], use_clca: bool,
                 use_clsa: bool) -> tuple[str, ...]:
  """The classifier branches a CLAN with these switches has, in output order.

  'layer2', 'layer3', ...: L̂_s for each mid-level tap (with CLCA only);
  'top': L_N (always); 'refined': L̂_N (with CLSA only).
  """
  return ((*mid_level_taps,) if use_clca else ()) + (TOP_BRANCH,) + (
      (REFINED_BRANCH,) if use_clsa else ())


class ClassifierHead(nn.Module):
  """Global average pooling then a linear classifier: [B, H, W, C] -> [B, K] (float32)."""

  num_classes: int
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pooled = jnp.mean(x, axis=(1, 2), dtype=jnp.float32)
    return nn.Dense(self.num_classes, dtype=jnp.float32,
                    param_dtype=self.param_dtype, name='fc')(pooled)


class CLAN(nn.Module):
  """Cross-layer Attention Network.

  With both switches off it is the plain backbone with one classifier on L_N
  (the paper's baseline); `use_clca` adds L̂_s = CLCA(L_s, L_N) and its
  branches; `use_clsa` adds L̂_N from CLSA(L̂_s, L_N) (L_s when CLCA is off)
  and its branch.

  Attributes:
    num_classes: classes of every branch.
    backbone: a torchvision ResNet name; its params live under 'backbone'.
    mid_level_taps: stages giving the mid-level maps L_s.
    clca_options, clsa_options: attributes of every CLCA / CLSA block.
    refined_top_merge: how per-scale CLSA outputs form L̂_N: 'concat' on
      channels (choice) or 'sum'.
    combine: the final prediction, 'mean_softmax' over branches (choice) or
      'sum_logits'.
    remat, remat_policy: which modules recompute their activations in the
      backward pass, and what they still save (clan_jax/models/remat.py).
  """

  num_classes: int
  backbone: str = 'resnet50'
  backbone_width: int = 64
  zero_init_residual: bool = False
  mid_level_taps: Sequence[str] = ('layer2', 'layer3')
  use_clca: bool = True
  use_clsa: bool = True
  clca_options: Mapping[str, Any] = nn.FrozenDict()
  clsa_options: Mapping[str, Any] = nn.FrozenDict()
  refined_top_merge: str = 'concat'
  combine: str = 'mean_softmax'
  remat: str = 'none'
  remat_policy: str = 'nothing_saveable'
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> dict[str, Any]:
    """Classifies images [B, H, W, 3] (H, W divisible by 32 for avg CLSA).

    Returns:
      {'branches': {name: logits [B, K] float32, for each of `branch_names`},
       'combined': [B, K] float32 scores whose argmax is the prediction (mean
       of the branches' softmax probabilities, or the sum of their logits)}.
    """
    features = create_resnet(
        self.backbone, width=self.backbone_width,
        zero_init_residual=self.zero_init_residual,
        remat_policy=self.remat_policy if remat.remats_stages(self.remat) else None,
        dtype=self.dtype, param_dtype=self.param_dtype, name='backbone')(images, train)
    top = features['layer4']
    mids = {tap: features[tap] for tap in self.mid_level_taps}
    branches = {}
    if self.use_clca:
      clca_cls = (remat.wrap(CLCA, self.remat_policy, static_argnums=(3,))
                  if remat.remats_clca(self.remat) else CLCA)
      mids = {tap: clca_cls(**self.clca_options, dtype=self.dtype,
                        param_dtype=self.param_dtype, name=f'clca_{tap}')(
                            mid, top, train)
              for tap, mid in mids.items()}
      branches.update({tap: self._head(tap)(mid) for tap, mid in mids.items()})
    branches[TOP_BRANCH] = self._head(TOP_BRANCH)(top)
    if self.use_clsa:
      refined = [CLSA(**self.clsa_options, dtype=self.dtype,
                      param_dtype=self.param_dtype, name=f'clsa_{tap}')(mid, top, train)
                 for tap, mid in mids.items()]
      if self.refined_top_merge == 'concat':
        refined_top = jnp.concatenate(refined, axis=-1)
      else:
        refined_top = sum(refined)
      branches[REFINED_BRANCH] = self._head(REFINED_BRANCH)(refined_top)
    return {'branches': branches, 'combined': combine_branches(branches, self.combine)}

  def _head(self, branch: str) -> ClassifierHead:
    return ClassifierHead(self.num_classes, param_dtype=self.param_dtype,
                          name=f'head_{branch}')


def combine_branches(branches: Mapping[str, jax.Array], mode: str) -> jax.Array:
  """Joins per-branch logits [B, K] into one [B, K] score (see CLAN.combine)."""
  logits = jnp.stack(list(branches.values()))
  if mode == 'mean_softmax':
    return jnp.mean(jax.nn.softmax(logits, axis=-1), axis=0)
  return jnp.sum(logits, axis=0)
