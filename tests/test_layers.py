"""The package's layers: imports run only downward, from programs to library code."""
import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
# From the bottom up; a module may import its own package and any lower layer.
LAYERS = (
    ('clan_jax.user_errors',),
    ('clan_jax.sharding', 'clan_jax.config_rules'),
    ('clan_jax.models', 'clan_jax.data'),
    ('clan_jax.workdir',),
    ('clan_jax.training',),
    ('clan_jax.inference', 'clan_jax.experiments'),
    ('clan_jax.cli', 'train'),
)


def _unit(module: str) -> tuple[int, str]:
  """(layer, package) of a dotted module name."""
  for level, units in enumerate(LAYERS):
    for unit in units:
      if module == unit or module.startswith(unit + '.'):
        return level, unit
  raise AssertionError(f'{module} is in no layer of tests/test_layers.py: add it.')


def _modules() -> dict[str, pathlib.Path]:
  paths = {'train': ROOT / 'train.py'}
  for path in (ROOT / 'clan_jax').rglob('*.py'):
    parts = path.relative_to(ROOT).with_suffix('').parts
    paths['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
  del paths['clan_jax']  # the root, which imports nothing (test_root_imports_nothing)
  return paths


def _imports(path: pathlib.Path) -> set[str]:
  """The clan_jax modules `path` imports, wherever in the file."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      found.update(f'{node.module}.{alias.name}' for alias in node.names)
  return {name for name in found if name.split('.')[0] == 'clan_jax'}


@pytest.mark.parametrize('module', sorted(_modules()))
def test_imports_run_downward(module):
  level, unit = _unit(module)
  upward = []
  for imported in _imports(_modules()[module]):
    imported_level, imported_unit = _unit(imported)
    if imported_unit != unit and imported_level >= level:
      upward.append(imported)
  assert not upward, f'{module} (layer {level}) imports {sorted(upward)} from its layer or above'


def test_every_module_is_in_a_layer():
  for module in _modules():
    _unit(module)


def test_root_imports_nothing():
  assert not _imports(ROOT / 'clan_jax' / '__init__.py')
