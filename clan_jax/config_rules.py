"""Rules for config fields: one per field, next to the code that owns the field.

A rule says which values of one field are allowed and how to say so:

  integer('backbone_width', 1)  ->  config.model.backbone_width=0 must be an integer >= 1.

Each package declares the rules of its own fields (the models theirs, each
block those of its options group, training the rest); `check` applies them.
`tests/test_config_rules.py` checks that every field of configs/base.py has
exactly one.
"""
from collections.abc import Callable, Iterable, Sequence
import dataclasses
import math
from typing import Any

from clan_jax import storage
from clan_jax.user_errors import UserError


@dataclasses.dataclass(frozen=True)
class Rule:
  """`check(value)` is True for every allowed value of `field`; `allowed` says which."""
  field: str  # dotted, relative to the group the rule is checked in, e.g. 'backbone_width'
  check: Callable[[Any], bool]
  allowed: str


def is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def is_number(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def integer(field: str, low: int | None = None, high: int | None = None, *,
            also: Sequence[int] = ()) -> Rule:
  """An int in [low, high] (either end open when None), or one of `also`."""
  def check(value):
    return is_int(value) and (value in also or (
        (low is None or value >= low) and (high is None or value <= high)))
  bounds = ' and '.join(part for part in (
      f'>= {low}' if low is not None else '', f'<= {high}' if high is not None else '')
      if part)
  allowed = f'an integer {bounds}'.strip() + ''.join(f', or {v}' for v in also)
  return Rule(field, check, allowed)


def number(field: str, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False) -> Rule:
  """A finite int or float in the interval given; `*_open` excludes that end."""
  def check(value):
    return is_number(value) and (
        low is None or (value > low if low_open else value >= low)) and (
        high is None or (value < high if high_open else value <= high))
  if low is not None and high is not None:
    interval = f'in {"(" if low_open else "["}{low:g}, {high:g}{")" if high_open else "]"}'
  elif low is not None:
    interval = f'{">" if low_open else ">="} {low:g}'
  elif high is not None:
    interval = f'{"<" if high_open else "<="} {high:g}'
  else:
    interval = ''
  return Rule(field, check, f'a finite number {interval}'.strip())


def boolean(field: str) -> Rule:
  return Rule(field, lambda v: isinstance(v, bool), 'True or False')


def choice(field: str, options: Sequence[Any]) -> Rule:
  return Rule(field, lambda v: v in options, f'one of {tuple(options)}')


def text(field: str) -> Rule:
  return Rule(field, lambda v: isinstance(v, str) and bool(v.strip()), 'a non-empty string')


def _path_or_url(value: Any, field: str) -> bool:
  """Whether `value` is a non-empty string; a URL whose scheme or bucket cannot
  work raises its own UserError (`storage.check`)."""
  if not isinstance(value, str) or not value:
    return False
  storage.check(value, f'config.{field}')
  return True


def optional_path(field: str, kind: str) -> Rule:
  """None, or the path or URL of an existing file (kind='file') or directory ('dir')."""
  def check(value):
    if value is None:
      return True
    if not _path_or_url(value, field):
      return False
    path = storage.path(value)
    return path.is_file() if kind == 'file' else path.is_dir()
  return Rule(field, check,
              f'None or the path of an existing {"file" if kind == "file" else "directory"}')


def optional_location(field: str, what: str) -> Rule:
  """None or a non-empty path or URL (which need not exist yet); `what` says what None means."""
  return Rule(field, lambda v: v is None or _path_or_url(v, field),
              f'None ({what}) or a directory')


def prefixed(prefix: str, rules: Iterable[Rule]) -> list[Rule]:
  """`rules` of a group, their fields named from the config's root ('model.clca.' + field)."""
  return [dataclasses.replace(rule, field=prefix + rule.field) for rule in rules]


_MISSING = object()


def _get(config: Any, field: str) -> Any:
  value = config
  for key in field.split('.'):
    if not hasattr(value, 'keys') or key not in value:
      return _MISSING
    value = value[key]
  return value


def check(rules: Iterable[Rule], config: Any, prefix: str = '') -> None:
  """Raises a UserError naming the first field of `rules` missing from `config` or not allowed.

  `prefix` is where `config` sits in the whole config ('model.' for config.model).
  """
  for rule in rules:
    value = _get(config, rule.field)
    if value is _MISSING:
      raise UserError(f'config.{prefix}{rule.field} is missing: this config predates it; add '
                      'it (configs/base.py has every field and its default).')
    if not rule.check(value):
      raise UserError(f'config.{prefix}{rule.field}={value!r} must be {rule.allowed}.')
