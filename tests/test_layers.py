"""The package's layers: imports run only downward, from programs to library code.

Also what stands outside them: the configs are plain data, which import no
library code, and the package reaches absl and ml_collections through their
public names only.
"""
import ast
import importlib
import pathlib
import types

import pytest

from clan_jax.models import backbones
from configs import vgg16

ROOT = pathlib.Path(__file__).resolve().parent.parent
# From the bottom up; a module may import its own package and any lower layer.
LAYERS = (
    ('clan_jax.user_errors',),
    ('clan_jax.storage',),
    ('clan_jax.sharding', 'clan_jax.config_rules'),
    ('clan_jax.models', 'clan_jax.data'),
    ('clan_jax.workdir',),
    ('clan_jax.training',),
    ('clan_jax.inference',),
    ('clan_jax.experiments',),  # studies of many runs, read with inference's tools
    ('clan_jax.cli',),
    ('train',),  # on the programs' flags and error plumbing, clan_jax/cli/program.py
)
# The libraries whose private modules and names the package must not use, and
# their modules that are public API (ml_collections.config_flags.config_flags,
# say, is not: its package exports what is public of it).
GUARDED = ('absl', 'ml_collections')
PUBLIC_MODULES = ('absl.app', 'absl.flags', 'absl.logging', 'absl.logging.converter',
                  'ml_collections', 'ml_collections.config_dict', 'ml_collections.config_flags')


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


def test_configs_import_no_library_code():
  for path in sorted((ROOT / 'configs').glob('*.py')):
    assert not _imports(path), f'{path.name} imports {sorted(_imports(path))}'


def test_configs_name_the_taps_of_the_backbones():
  # A config cannot ask the registry: configs/vgg16.py names VGG's taps itself.
  for name in ('vgg16', 'vgg16_bn'):
    assert backbones.get(name).taps == vgg16.TAPS


def test_the_error_types_import_nothing():
  tree = ast.parse((ROOT / 'clan_jax' / 'user_errors.py').read_text())
  assert not [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]


def _private_part(dotted: str) -> str | None:
  """The first part of `dotted` (e.g. 'absl.flags.FLAGS') that is not public API, or None.

  A module is public when PUBLIC_MODULES lists it; a name read from a module
  when it has no leading _ and is in the module's __all__, where it has one.
  """
  root, *names = dotted.split('.')
  value = importlib.import_module(root)
  for depth, name in enumerate(names, 2):
    if not isinstance(value, types.ModuleType):
      return None  # an attribute of a class or object, not of the library's namespace
    path = '.'.join([root, *names][:depth])
    member = getattr(value, name, None)
    if member is None:  # a submodule that nothing has imported yet, or no such name
      try:
        member = importlib.import_module(path)
      except ImportError:
        pass
    if isinstance(member, types.ModuleType):
      if path not in PUBLIC_MODULES:
        return path
    elif name.startswith('_') or name not in getattr(value, '__all__', (name,)):
      return path
    value = member
  return None


def _private_uses(path: pathlib.Path) -> set[str]:
  """The private modules and names of absl and ml_collections that `path` imports or reads."""
  tree = ast.parse(path.read_text())
  used = set()  # dotted paths into the GUARDED libraries
  local = {}  # name in the file -> the dotted path it stands for
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        used.add(alias.name)
        # `import a.b` binds a; `import a.b as c` binds c to a.b.
        local[alias.asname or alias.name.split('.')[0]] = (
            alias.name if alias.asname else alias.name.split('.')[0])
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for alias in node.names:
        used.add(f'{node.module}.{alias.name}')
        local[alias.asname or alias.name] = f'{node.module}.{alias.name}'
  for node in ast.walk(tree):
    names = []
    while isinstance(node, ast.Attribute):
      names.insert(0, node.attr)
      node = node.value
    if names and isinstance(node, ast.Name) and node.id in local:
      used.add('.'.join([local[node.id], *names]))
  return {part for dotted in used if dotted.split('.')[0] in GUARDED
          for part in [_private_part(dotted)] if part}


@pytest.mark.parametrize('module', sorted(_modules()))
def test_no_private_api_of_absl_or_ml_collections(module):
  assert not _private_uses(_modules()[module]), (
      f'{module} uses {sorted(_private_uses(_modules()[module]))}, not public')


def test_the_private_api_check_finds_private_uses(tmp_path):
  path = tmp_path / 'uses.py'
  path.write_text('from absl import flags\n'
                  'from ml_collections import config_flags\n'
                  'from ml_collections.config_flags import config_flags as internal\n'
                  'config_flags.config_flags.is_config_flag(flags.FLAGS)\n'
                  'flags._helpers\n')
  assert _private_uses(path) == {'ml_collections.config_flags.config_flags',
                                 'absl.flags._helpers'}
