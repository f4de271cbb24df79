"""Every `python train.py` and ablation command in the README runs, with tiny overrides.

The commands are read from README.md itself, so a command that the README
shows but the code no longer accepts fails here.
"""
import os
import re
import shlex
import subprocess
import sys

from flax import traverse_util
import jax
import jax.numpy as jnp
import pytest

from clan_jax.models import torchvision_weights
from clan_jax.models import backbones

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Appended to every command: later flags win, so these shrink any config.
TINY = ['--config.data.dataset=clan_synthetic', '--config.data.synthetic.num_classes=4',
        '--config.data.synthetic.train_per_class=8', '--config.data.synthetic.test_per_class=4',
        '--config.data.synthetic.image_size=36', '--config.data.resize_size=36',
        '--config.data.image_size=32', '--config.data.batch_size=8', '--config.data.eval_batch_size=8',
        '--config.model.backbone_width=4',
        '--config.init.source_pretraining.train_per_class=2',
        '--config.init.source_pretraining.num_train_steps=2',
        '--config.num_train_steps=2', '--config.checkpoint.every_steps=2',
        '--config.log_every_steps=1', '--config.mesh.data=1']
def readme_commands(program: str) -> list[list[str]]:
  """The arguments of every command in README.md's code blocks that runs `program`."""
  with open(os.path.join(REPO, 'README.md')) as f:
    text = f.read()
  blocks = re.findall(r'```bash\n(.*?)```', text, flags=re.S)
  commands = []
  for block in blocks:
    for line in block.replace('\\\n', ' ').splitlines():
      words = shlex.split(line, comments=True)
      for i in range(len(words) - 1):
        if words[i] == 'python' and ' '.join(words[i + 1:]).startswith(program):
          end = words.index('&&', i) if '&&' in words[i:] else len(words)
          commands.append(words[i + 1 + len(program.split()):end])
  return commands


def _tiny_weights(path: str) -> None:
  """Weights of width 4 as `convert_weights` writes them, for `init.backbone_weights`;
  the README names each file after its backbone (`resnet50.npz`)."""
  variant = os.path.splitext(os.path.basename(path))[0]
  variables = backbones.get(variant).create(width=4).init(
      jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  arrays = {k: jax.device_get(v) for k, v in
            traverse_util.flatten_dict(jax.device_get(variables), sep='/').items()}
  torchvision_weights.save_npz(path, torchvision_weights.BackboneWeights(variant, arrays))


def _localise(argv: list[str], tmp_path) -> list[str]:
  """Workdirs and weight files of the README moved under `tmp_path`."""
  out = []
  for arg in argv:
    name, _, value = arg.partition('=')
    if name == '--workdir':
      arg = f'--workdir={tmp_path / value.strip("/").replace("/", "_")}'
    elif value.endswith('.npz'):
      _tiny_weights(str(tmp_path / os.path.basename(value)))
      arg = f'{name}={tmp_path / os.path.basename(value)}'
    out.append(arg)
  return out


def test_readme_shows_the_ablation_commands():
  commands = readme_commands('train.py')
  assert [] in commands  # the quickstart
  assert any('--config.model.use_mid_block=False' in c
             and '--config.model.use_top_block=False' in c for c in commands)
  assert readme_commands('-m clan_jax.cli.ablate')


def test_every_readme_train_command_runs(data_dir, tmp_path):
  commands = [_localise(c, tmp_path) + TINY + [f'--config.data.data_dir={data_dir}']
              for c in readme_commands('train.py')]
  # The quickstart's default workdir would land in the repository.
  commands = [c if any(a.startswith('--workdir') for a in c)
              else [f'--workdir={tmp_path / "default"}', *c] for c in commands]
  start = lambda argv: subprocess.Popen(
      [sys.executable, 'train.py', *argv], cwd=REPO, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)
  # The first run alone prepares the dataset; then two at a time, as the
  # machine's cores, not each run, are the limit.
  pending, queue = [start(commands[0])], commands[1:]
  while pending:
    process = pending.pop(0)
    stdout, stderr = process.communicate(timeout=900)
    assert process.returncode == 0, f'{process.args}\n{stderr[-3000:]}'
    assert 'Test accuracy' in stdout
    while queue and len(pending) < 2:
      pending.append(start(queue.pop(0)))


@pytest.mark.parametrize('argv', readme_commands('-m clan_jax.cli.ablate'))
def test_readme_ablation_command_runs(argv, tmp_path):
  # Two runs at a time, on a data directory of its own: the workers must not
  # both prepare the missing dataset.
  argv = _localise(argv, tmp_path) + TINY + [
      f'--config.data.data_dir={tmp_path / "data"}', '--variants=plain,clan', '--seeds=0,1',
      '--learning_rates=0.05,0.1', '--config.eval_every_epochs=1', '--jobs=2']
  if not any(a.startswith('--workdir') for a in argv):
    argv.append(f'--workdir={tmp_path / "ablation"}')
  command = [sys.executable, '-m', 'clan_jax.cli.ablate', *argv]
  first = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
  assert first.returncode == 0, first.stderr[-3000:]
  root = next(a.partition('=')[2] for a in argv if a.startswith('--workdir'))
  with open(os.path.join(root, 'ablation.md')) as f:
    table = f.read()
  rows = [line for line in table.splitlines() if line.startswith('| plain')
          or line.startswith('| clan')]
  # Per branch, then per seed with the paired difference: two rows per variant.
  assert len(rows) == 4 and all('±' in row for row in rows)
  assert rows[3].split(' | ')[-1].endswith('(2) |')  # clan - plain over seeds 0 and 1
  assert os.path.getsize(os.path.join(root, 'validation.png')) > 1000
  # Re-running skips the finished runs and writes the same table.
  second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
  assert second.returncode == 0, second.stderr[-3000:]
  assert second.stderr.count('finished earlier, skipped') == 8
  with open(os.path.join(root, 'ablation.md')) as f:
    assert f.read() == table
