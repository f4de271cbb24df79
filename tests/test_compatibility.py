"""An older workdir's config.json read as today's config (clan_jax/workdir/compatibility.py)."""
import json

from absl import flags
from ml_collections import config_flags
import pytest

from clan_jax.user_errors import UserError
from clan_jax.workdir import compatibility, trained_model
from configs import base


def test_flat_fields_added_fields_and_renamed_values_are_todays():
  today = base.get_config('clan_synthetic')
  old = compatibility.without_old_names(today).to_dict()
  model = old['model']
  # The ablation switches, named after the default blocks before the registry.
  model['use_clca'] = model.pop('use_mid_block')
  model['use_clsa'] = not model.pop('use_top_block')
  del model['remat_policy'], model['clsa']['norm'], model['clca']['attention_block_size']
  model['remat'] = 'clca'  # rematerialised CLCA, before any mid-level block could
  model['clca']['attention_impl'] = 'fused'  # XLA's path, before 'auto'
  old['batch_size'] = old['data'].pop('batch_size')  # flat, before the groups
  upgraded = compatibility.upgrade(old)
  assert upgraded.data.batch_size == today.data.batch_size and 'batch_size' not in upgraded
  assert upgraded.model.remat == 'mid_blocks'
  assert upgraded.model.remat_policy == 'nothing_saveable'
  assert upgraded.model.clca.attention_impl == 'auto'
  assert upgraded.model.clca.attention_block_size == 512
  assert upgraded.model.clsa.norm == 'none'  # the gate had no norm before
  assert upgraded.model.use_mid_block and not upgraded.model.use_top_block
  assert not {'use_clca', 'use_clsa'} & set(upgraded.model)


def test_the_group_of_a_block_a_workdir_does_not_use_is_not_made_up():
  old = base.get_config('clan_synthetic').to_dict()
  del old['model']['clsa']
  assert 'clsa' not in compatibility.upgrade(old).model


def test_the_old_names_of_renamed_fields_still_set_them_on_the_command_line():
  argv = ['train.py', '--config=configs/test.py', '--config.model.use_clca=False',
          '--noconfig.model.use_clsa']
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=flag_values, lock_config=True,
                                  sys_argv=argv)
  flag_values(argv)
  model = flag_values.config.model
  assert not model.use_mid_block and not model.use_top_block


def test_a_workdir_is_written_and_compared_under_todays_names(tmp_path):
  config = base.get_config('clan_synthetic')
  trained_model.save_run_info(str(tmp_path), config, ['a', 'b'])
  with open(tmp_path / trained_model.CONFIG_FILE) as f:
    assert not {'use_clca', 'use_clsa'} & set(json.load(f)['model'])
  trained_model.check_same_model(str(tmp_path), config)
  config.model.use_clca = False
  with pytest.raises(UserError, match=r'\(model.use_mid_block: True -> False\)\.'):
    trained_model.check_same_model(str(tmp_path), config)
