"""Every code block of README.md and docs/*.md is run, in page order, with tiny overrides.

The blocks are read from the pages themselves, so a command or a snippet that
the docs show but the code no longer accepts fails here. The convention (the
README's developer notes state it too):

- a fenced block is ```bash or ```python (run) or ```text (output, never run);
- `<!-- not run: REASON -->` on the line before a bash or python block keeps
  it from running, and says why in the page itself;
- each page runs in a scratch directory of its own, with the repository's
  programs linked in, so the docs write relative paths;
- `python train.py` and `python -m clan_jax.cli.ablate` get TINY appended
  (later flags win); every other command runs as written; `pip install`
  only checks that what it names exists, as the suite runs in an environment
  that has it all;
- `$MANUAL_DIR` holds tiny copies of the three datasets as downloaded
  (`tests/fake_datasets.py`), `$DATA_DIR` is an empty TFDS data directory,
  and `resnet50.pth`, `model.safetensors`, `bird.jpg` and `other.png` lie in
  the scratch directory, as the pages name them.
"""
import dataclasses
import json
import os
import pathlib
import re
import stat
import subprocess
import sys

import numpy as np
import PIL.Image
import pytest

from clan_jax.data import synthetic
from tests import fake_datasets

REPO = pathlib.Path(__file__).resolve().parent.parent
PAGES = ['README.md', *sorted(str(p.relative_to(REPO)) for p in (REPO / 'docs').glob('*.md'))]
# What a scratch directory links in from the repository; docs/ is copied, as
# a command may write there (the ablation tool rewrites a table in its workdir).
LINKED = ('train.py', 'configs', 'clan_jax', 'benchmarks', 'tests', 'requirements.txt',
          'requirements-dev.txt', 'pyproject.toml', 'BENCHMARKS.md')
RUN, SHOWN = ('bash', 'python'), ('text',)

# Appended to every training command: a tiny model on tiny data for two steps,
# in batches small enough for the tiny copies of the datasets.
TINY = ['--config.data.synthetic.num_classes=4', '--config.data.synthetic.train_per_class=8',
        '--config.data.synthetic.test_per_class=4', '--config.data.synthetic.image_size=36',
        '--config.data.resize_size=36', '--config.data.image_size=32',
        '--config.data.batch_size=2', '--config.data.eval_batch_size=4',
        '--config.model.backbone_width=4',
        '--config.init.source_pretraining.train_per_class=2',
        '--config.init.source_pretraining.num_train_steps=2',
        '--config.num_train_steps=2', '--config.checkpoint.every_steps=2',
        '--config.log_every_steps=1', '--config.mesh.data=1', '--config.mesh.fsdp=1']
# The ablation tool's study, shrunk to two runs.
TINY_ABLATION = ['--variants=plain,clan', '--seeds=0', '--config.eval_every_epochs=1']

_FENCE = re.compile(
    r'^(?P<indent>[ \t]*)```(?P<lang>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$',
    re.M | re.S)
_NOT_RUN = re.compile(r'<!-- not run: (?P<reason>.*?) -->[ \t]*\n[ \t]*\Z', re.S)
_LINK = re.compile(r'\]\((?P<target>[^)\s]+)\)')


@dataclasses.dataclass
class Block:
  page: str
  line: int
  lang: str
  body: str
  not_run: str | None  # the reason, where the page marks the block not run

  def __str__(self):
    return f'{self.page}:{self.line} ({self.lang})'


def blocks(page: str) -> list[Block]:
  """The fenced blocks of `page`, in order."""
  text = (REPO / page).read_text()
  found = []
  for match in _FENCE.finditer(text):
    indent = match['indent']
    body = ''.join(line[len(indent):] if line.startswith(indent) else line
                   for line in match['body'].splitlines(keepends=True))
    before = _NOT_RUN.search(text[max(0, match.start() - 300):match.start()])
    found.append(Block(page, text.count('\n', 0, match.start()) + 1, match['lang'].strip(),
                       body, before['reason'].strip() if before else None))
  return found


def runnable(page: str) -> list[Block]:
  return [b for b in blocks(page) if b.lang in RUN and b.not_run is None]


def test_every_block_is_tagged_run_or_shown():
  bad = [str(b) for page in PAGES for b in blocks(page) if b.lang not in RUN + SHOWN]
  assert not bad, f'untagged or unknown fences (allowed: {RUN + SHOWN}): {bad}'
  blank = [str(b) for page in PAGES for b in blocks(page) if b.not_run == '']
  assert not blank, f'"not run" needs its reason: {blank}'


def test_fences_are_balanced():
  for page in PAGES:
    fences = re.findall(r'^[ \t]*```', (REPO / page).read_text(), flags=re.M)
    assert len(fences) == 2 * len(blocks(page)), f'{page}: a fence is not closed'


def test_links_and_paths_stay_in_the_repository():
  for page in [*PAGES, 'BENCHMARKS.md']:
    text = (REPO / page).read_text()
    assert '../shared' not in text and '/work/' not in text, page
    for match in _LINK.finditer(text):
      target = match['target'].split('#')[0]
      if not target or re.match(r'[a-z]+:', target):
        continue
      path = ((REPO / page).parent / target).resolve()
      assert path.is_relative_to(REPO) and path.exists(), f'{page}: broken link {target}'


def test_readme_is_a_front_page_that_maps_the_docs():
  readme = (REPO / 'README.md').read_text()
  assert readme.count('\n') <= 300
  for page in PAGES[1:]:
    assert f']({page})' in readme, f'README.md does not link {page}'


_PYTHON_SHIM = '''#!{python}
"""`python` in a docs scratch directory: training commands get the tests' tiny overrides."""
import json, os, sys
args = sys.argv[1:]
if args[:1] == ['train.py']:
  args += json.loads(os.environ['DOCS_TINY'])
elif args[:2] == ['-m', 'clan_jax.cli.ablate']:
  args += json.loads(os.environ['DOCS_TINY']) + json.loads(os.environ['DOCS_TINY_ABLATION'])
os.execv(sys.executable, [sys.executable, *args])
'''
_PIP_SHIM = '''#!{python}
"""`pip` in a docs scratch directory: checks that what `install` names exists."""
import os, sys
args = sys.argv[1:]
assert args[:1] == ['install'], f'pip {{args}}: only `pip install` is expected in the docs'
for flag, value in zip(args, args[1:]):
  if flag in ('-r', '-e') and not os.path.exists(value):
    sys.exit(f'pip {{" ".join(args)}}: {{value}} does not exist')
'''


def _executable(path: pathlib.Path, text: str) -> None:
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR)


def _scratch(root: pathlib.Path) -> dict[str, str]:
  """A scratch directory at `root` as the docs expect; returns the blocks' environment."""
  root.mkdir()
  for name in LINKED:
    (root / name).symlink_to(REPO / name)
  subprocess.run(['cp', '-r', str(REPO / 'docs'), str(root / 'docs')], check=True)
  bin_dir = root / '.bin'
  bin_dir.mkdir()
  for name in ('python', 'python3'):
    _executable(bin_dir / name, _PYTHON_SHIM.format(python=sys.executable))
  _executable(bin_dir / 'pip', _PIP_SHIM.format(python=sys.executable))

  manual_dir = root / '.manual'
  manual_dir.mkdir()
  fake_datasets.write_cub(manual_dir, archive=False)
  fake_datasets.write_aircraft(manual_dir, archive=True)
  fake_datasets.write_cars(manual_dir, 'kaggle')
  data_dir = root / '.tensorflow_datasets'

  import safetensors.torch  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from tests import torch_resnet  # pylint: disable=g-import-not-at-top
  state_dict = torch_resnet.resnet('resnet50', width=4).state_dict()
  torch.save(state_dict, root / 'resnet50.pth')
  safetensors.torch.save_file(state_dict, root / 'model.safetensors')
  rng = np.random.default_rng(0)
  PIL.Image.fromarray(synthetic.render_bird(synthetic.species(6), rng, 60)).save(
      root / 'bird.jpg')
  PIL.Image.fromarray(synthetic.render_bird(synthetic.species(2), rng, 44)).save(
      root / 'other.png')

  env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}', MANUAL_DIR=str(manual_dir),
             DATA_DIR=str(data_dir), JAX_PLATFORMS='cpu',
             DOCS_TINY=json.dumps(TINY + [f'--config.data.data_dir={data_dir}']),
             DOCS_TINY_ABLATION=json.dumps(TINY_ABLATION))
  # The blocks are the user's programs: they see this machine's one CPU device,
  # not the 8 simulated ones of the test process (set through jax.config, not
  # the environment), and compile as every test does (tests/conftest.py).
  return env


def run_blocks(page: str, root: pathlib.Path) -> None:
  env = _scratch(root)
  for block in runnable(page):
    if block.lang == 'bash':
      command = ['bash', '-euo', 'pipefail', '-c', block.body]
    else:
      script = root / f'.block_{block.line}.py'
      script.write_text(block.body)
      command = [sys.executable, str(script)]
    result = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, (
        f'{block} failed (status {result.returncode}):\n{block.body}\n'
        f'--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-5000:]}')


def _page_test(page: str) -> type:
  """A test class of its own that runs `page`'s blocks.

  A class, not a parameter: pytest-xdist (`--dist loadscope`) hands each class
  to one worker as a unit, so the pages, the suite's longest tests, run side by
  side instead of all on the worker that takes this file.
  """
  def test_runs(self, tmp_path):
    del self
    run_blocks(page, tmp_path / 'scratch')
  name = 'TestPage_' + re.sub(r'\W', '_', page.removesuffix('.md'))
  return pytest.mark.slow(type(name, (), {'test_runs': test_runs}))


for _page in PAGES:
  if runnable(_page):
    _test = _page_test(_page)
    globals()[_test.__name__] = _test
