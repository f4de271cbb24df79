"""A block and a backbone from outside the package: one file, one registry line, one config group.

tests/toy_se_block.py (a squeeze-excitation mid-level block) and
tests/toy_backbone.py (three conv stages) train, evaluate, draw attention
maps, resume from an older workdir and pass config validation with no other
change; and the library names CLAN's own blocks only in their files, the
registry and the compatibility module.
"""
import ast
import json
import os
import pathlib
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from clan_jax import models
from clan_jax.data import synthetic
from clan_jax.inference import attention_maps
from clan_jax.inference.evaluate import evaluate
from clan_jax.models import backbones, blocks
from clan_jax.training import config_validation, diagnostics, trainer
from clan_jax.user_errors import UserError
from clan_jax.workdir import trained_model
from configs import base
from configs import test as test_config
from tests import toy_backbone, toy_se_block

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The files that may name CLCA or CLSA: theirs, the registry, and the defaults
# of workdirs written before the registry (clan_jax/experiments and
# clan_jax/cli/ablate.py name the variants of the ablation).
NAMING_BLOCKS = {'clan_jax/models/clca.py', 'clan_jax/models/clsa.py',
                 'clan_jax/models/blocks.py', 'clan_jax/workdir/compatibility.py'}
OUTSIDE_THE_LIBRARY = ('clan_jax/experiments/', 'clan_jax/cli/ablate.py')


@pytest.fixture
def toy_config(monkeypatch, data_dir):
  # The one registry line of each:
  monkeypatch.setitem(blocks.MID_LEVEL_BLOCKS, 'se', toy_se_block.SPEC)
  monkeypatch.setitem(backbones.BACKBONES, 'toynet', toy_backbone.SPEC)
  config = test_config.get_config()
  config.data.data_dir = data_dir
  base.set_backbone(config, 'toynet', toy_backbone.SPEC.taps[2])
  config.model.mid_block = 'se'
  config.model.se = ml_collections.ConfigDict({'reduction': 4})  # its config group
  config.num_train_steps = 2
  return config


@pytest.mark.slow
def test_a_toy_block_and_backbone_train_evaluate_draw_and_resume(toy_config, tmp_path):
  workdir = str(tmp_path / 'toy')
  config_validation.validate(toy_config)
  results = trainer.train_and_evaluate(toy_config, workdir)
  assert np.isfinite(results['loss'])
  trained = trained_model.load(workdir)
  assert trained.step == 2
  assert set(trained.variables['params']) == {
      'backbone', 'se_stage1', 'se_stage2', 'clsa_stage1', 'clsa_stage2',
      'head_stage1', 'head_stage2', 'head_top', 'head_refined'}
  metrics = evaluate(workdir)['metrics']['no_tta']
  assert 0 <= metrics['top1_combined'] <= 1

  # The toy block draws no map; CLSA still draws its own on its output.
  image = synthetic.render_bird(synthetic.species(1), np.random.default_rng(0), 40)
  (maps,) = attention_maps.compute(trained, [image])
  assert set(maps.blocks) == {'clsa'} and set(maps.blocks['clsa']) == {'stage1', 'stage2'}
  assert maps.blocks['clsa']['stage1'].shape == (8, 8)

  # A workdir from before the block's `reduction` (toy_se_block.SPEC.added_fields)
  # still loads and resumes.
  path = os.path.join(workdir, trained_model.CONFIG_FILE)
  with open(path) as f:
    stored = json.load(f)
  del stored['model']['se']['reduction']
  with open(path, 'w') as f:
    json.dump(stored, f)
  assert trained_model.load_config(workdir).model.se.reduction == 4
  toy_config.num_train_steps = 4
  trainer.train_and_evaluate(toy_config, workdir)
  assert trained_model.load(workdir).step == 4


def test_a_toy_blocks_options_are_checked_by_its_rules(toy_config):
  toy_config.model.se.reduction = 0
  with pytest.raises(UserError, match=r'^config.model.se.reduction=0 must be an integer >= 1.$'):
    config_validation.validate(toy_config)
  # A block the model does not use is not checked.
  toy_config.model.se.reduction = 4
  toy_config.model.clca.inner_ratio = 2.0
  config_validation.validate(toy_config)
  toy_config.model.mid_block = 'clca'
  with pytest.raises(UserError, match=r'^config.model.clca.inner_ratio=2.0 must be'):
    config_validation.validate(toy_config)


def test_only_the_options_of_the_blocks_in_use_make_another_model(toy_config, tmp_path):
  trained_model.save_run_info(str(tmp_path), toy_config, ['a', 'b', 'c', 'd'])
  toy_config.model.clca.inner_ratio = 0.25  # CLCA is not this model's mid-level block
  trained_model.check_same_model(str(tmp_path), toy_config)
  toy_config.model.se.reduction = 2
  with pytest.raises(UserError, match=r'\(model.se.reduction: 4 -> 2\)'):
    trained_model.check_same_model(str(tmp_path), toy_config)


def test_a_toy_blocks_diagnostics_are_logged_beside_clsas(toy_config):
  model = models.create_model(toy_config.model, num_classes=4)
  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  variables = model.init(jax.random.key(1), images, train=False)
  _, state = model.apply(variables, images, train=False, mutable=['intermediates'])
  params, sown = variables['params'], state['intermediates']
  stats = diagnostics.compute(params, jax.tree.map(jnp.ones_like, params), sown)
  assert sorted(stats) == sorted(diagnostics.names(params))
  assert {'se_gate_mean_se_stage1', 'se_gate_mean_se_stage2', 'gate_mean_clsa_stage1',
          'gate_std_clsa_stage2', 'grad_norm_se_stage1'} <= set(stats)
  np.testing.assert_allclose(stats['se_gate_mean_se_stage2'],
                             jnp.mean(sown['se_stage2']['gate'][0]), rtol=1e-6)


def _docstrings(tree: ast.AST) -> set[int]:
  return {id(node.body[0].value) for node in ast.walk(tree)
          if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef))
          and node.body and isinstance(node.body[0], ast.Expr)
          and isinstance(node.body[0].value, ast.Constant)}


def _names_in_code(path: pathlib.Path) -> list[str]:
  """Identifiers and strings of `path` that name CLCA or CLSA, docstrings aside."""
  tree = ast.parse(path.read_text())
  docstrings = _docstrings(tree)
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
      if id(node) in docstrings:
        continue
      words = [node.value]
    else:
      words = [getattr(node, field) for field in ('id', 'attr', 'name', 'arg', 'module')
               if isinstance(getattr(node, field, None), str)]
    found += [f'{path.relative_to(ROOT)}:{node.lineno}: {word!r}' for word in words
              if re.search('cl[cs]a', word, re.IGNORECASE)]
  return found


def test_only_the_blocks_files_name_clca_and_clsa():
  named = []
  for path in sorted((ROOT / 'clan_jax').rglob('*.py')):
    relative = str(path.relative_to(ROOT))
    if relative not in NAMING_BLOCKS and not relative.startswith(OUTSIDE_THE_LIBRARY):
      named += _names_in_code(path)
  assert not named, '\n'.join(named)
