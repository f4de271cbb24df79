"""The CLAN classifier: a registered backbone, mid- and top-level blocks, four branches."""
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from clan_jax.models import backbones, blocks, remat

Dtype = Any

TOP_BRANCH = 'top'
REFINED_BRANCH = 'refined'
COMBINE_MODES = ('mean_softmax', 'sum_logits')
MERGE_MODES = ('concat', 'sum')


def branch_names(mid_level_taps: Sequence[str], use_mid_block: bool,
                 use_top_block: bool) -> tuple[str, ...]:
  """The classifier branches a CLAN with these switches has, in output order.

  'layer2', 'layer3', ...: L̂_s for each mid-level tap (with the mid-level
  block only); 'top': L_N (always); 'refined': L̂_N (with the top-level block
  only).
  """
  return ((*mid_level_taps,) if use_mid_block else ()) + (TOP_BRANCH,) + (
      (REFINED_BRANCH,) if use_top_block else ())


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
  (the paper's baseline); `use_mid_block` adds L̂_s = mid_block(L_s, L_N) and
  its branches; `use_top_block` adds L̂_N from top_block(L̂_s, L_N) (L_s when
  the mid-level block is off) and its branch. The blocks come from
  models/blocks.py by name; the paper's are CLCA and CLSA.

  Attributes:
    num_classes: classes of every branch.
    backbone: a name in models/backbones.py; its params live under 'backbone'.
    backbone_width: channels of the backbone's first conv (torchvision: 64).
    backbone_options: the backbone's own attributes (its spec's `options`).
    top_stage: the stage giving L_N; None: the backbone's default.
    mid_level_taps: stages giving the mid-level maps L_s.
    use_mid_block, use_top_block: the ablation switches (config.model.use_mid_block,
      config.model.use_top_block).
    mid_block, top_block: names in models/blocks.py (choice: 'clca', 'clsa').
    mid_block_options, top_block_options: attributes of every such block.
    refined_top_merge: how per-scale top-level block outputs form L̂_N:
      'concat' on channels (choice) or 'sum'.
    combine: the final prediction, 'mean_softmax' over branches (choice) or
      'sum_logits'.
    remat, remat_policy: which modules recompute their activations in the
      backward pass, and what they still save (clan_jax/models/remat.py).
  """

  num_classes: int
  mid_block: str
  top_block: str
  backbone: str = 'resnet50'
  backbone_width: int = 64
  backbone_options: Mapping[str, Any] = nn.FrozenDict()
  top_stage: str | None = None
  mid_level_taps: Sequence[str] = ('layer2', 'layer3')
  use_mid_block: bool = True
  use_top_block: bool = True
  mid_block_options: Mapping[str, Any] = nn.FrozenDict()
  top_block_options: Mapping[str, Any] = nn.FrozenDict()
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
    spec = backbones.get(self.backbone)
    # Only backbones whose spec says so can rematerialise their stages.
    stage_remat = ({'remat_policy': self.remat_policy}
                   if remat.remats_stages(self.remat) else {})
    features = spec.create(
        width=self.backbone_width, dtype=self.dtype, param_dtype=self.param_dtype,
        name='backbone', **self.backbone_options, **stage_remat)(images, train)
    top = features[self.top_stage or spec.top_stage]
    mids = {tap: features[tap] for tap in self.mid_level_taps}
    branches = {}
    if self.use_mid_block:
      mid_block = blocks.MID_LEVEL_BLOCKS[self.mid_block].module
      if remat.remats_mid_blocks(self.remat):
        mid_block = remat.wrap(mid_block, self.remat_policy, static_argnums=(3,))
      mids = {tap: mid_block(**self.mid_block_options, dtype=self.dtype,
                             param_dtype=self.param_dtype,
                             name=f'{self.mid_block}_{tap}')(mid, top, train)
              for tap, mid in mids.items()}
      branches.update({tap: self._head(tap)(mid) for tap, mid in mids.items()})
    branches[TOP_BRANCH] = self._head(TOP_BRANCH)(top)
    if self.use_top_block:
      top_block = blocks.TOP_LEVEL_BLOCKS[self.top_block].module
      refined = [top_block(**self.top_block_options, dtype=self.dtype,
                           param_dtype=self.param_dtype,
                           name=f'{self.top_block}_{tap}')(mid, top, train)
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
