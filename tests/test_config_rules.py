"""Each config field has exactly one rule, next to the code that owns it."""
import collections

import ml_collections
import pytest

from clan_jax import config_rules, models
from clan_jax.training import config_validation
from clan_jax.user_errors import UserError
from clan_jax.workdir import compatibility
from configs import base


def _owners() -> list[str]:
  """The field of every rule and check of a single field, each as often as it is checked."""
  return ([rule.field for rule in config_validation.FIELD_RULES]
          + list(config_validation.CHECKED_ACROSS_FIELDS)
          + [f'model.{rule.field}' for rule in models.RULES]
          + [f'model.{field}' for field in models.CHECKED_AGAINST_REGISTRIES]
          + [f'model.{rule.field}' for rule in models.block_rules()])


def _fields(config: ml_collections.ConfigDict, prefix: str = '') -> list[str]:
  """Dotted names of the leaves of `config`; a group that holds a map (no
  nested groups, e.g. loss.branch_weights) counts if a rule names it whole."""
  fields = []
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict) and prefix + key not in _owners():
      fields += _fields(value, f'{prefix}{key}.')
    else:
      fields.append(prefix + key)
  return fields


def test_every_field_of_the_base_config_has_exactly_one_rule():
  owners = collections.Counter(_owners())
  # An old name is an alias of today's field, checked as that field.
  fields = _fields(compatibility.without_old_names(base.get_config()))
  assert sorted(set(_fields(base.get_config())) - set(fields)) == sorted(
      compatibility.RENAMED_FIELDS)
  assert [field for field in fields if owners[field] != 1] == []
  assert sorted(set(owners) - set(fields)) == []  # no rule for a field that is gone


@pytest.mark.parametrize('value,ok', [(3, True), (0, False), (True, False), (2.5, False)])
def test_a_rule_names_the_field_and_what_is_allowed(value, ok):
  group = ml_collections.ConfigDict({'size': value})
  rules = [config_rules.integer('size', 1, 8)]
  if ok:
    config_rules.check(rules, group, 'data.')
  else:
    with pytest.raises(UserError, match=rf'^config.data.size={value!r} must be an integer '
                       r'>= 1 and <= 8.$'):
      config_rules.check(rules, group, 'data.')


def test_a_missing_field_is_named():
  with pytest.raises(UserError, match=r'^config.model.size is missing: this config predates'):
    config_rules.check([config_rules.integer('size')], ml_collections.ConfigDict(), 'model.')
