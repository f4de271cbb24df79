"""An older workdir's config.json read as today's config (clan_jax/workdir/compatibility.py)."""
from clan_jax.workdir import compatibility
from configs import base


def test_flat_fields_added_fields_and_renamed_values_are_todays():
  today = base.get_config('clan_synthetic')
  old = today.to_dict()
  model = old['model']
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


def test_the_group_of_a_block_a_workdir_does_not_use_is_not_made_up():
  old = base.get_config('clan_synthetic').to_dict()
  del old['model']['clsa']
  assert 'clsa' not in compatibility.upgrade(old).model
