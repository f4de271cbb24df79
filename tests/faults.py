"""Runs train.py with one fault injected, for the interruption tests (tests/test_resume.py).

  CLAN_JAX_FAULT=<fault>:<step> python tests/faults.py <train.py flags>
  CLAN_JAX_FAULT=<fault>:<step> CLAN_JAX_FAULT_MODULE=clan_jax.cli.ablate \
      python tests/faults.py <its flags>     # another program that trains in-process

Faults, each at train step <step> (after the step's update, where the trainer
asks whether to stop):
  sigkill       SIGKILL before the step's checkpoint is saved.
  sigterm       SIGTERM: the trainer should save this step and exit 0.
  sigint        SIGINT (Ctrl-C), likewise.
  sigint_twice  two SIGINTs: the second should end the process at once.
  sigkill_save  SIGKILL right after the step's asynchronous save started, while
                orbax is still writing it.
  nan           the images of this step's batch are NaN, so its loss is.
  pause         prints `paused at step <step>` to stderr and sleeps, before the
                step's checkpoint, so that a test can kill the process there.

The signals are real ones, sent by the process to itself, so the step at which
they arrive is known.
"""
import os
import runpy
import signal
import sys
import time

import jax.numpy as jnp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from clan_jax.workdir import checkpointing  # pylint: disable=g-import-not-at-top
from clan_jax.training import steps  # pylint: disable=g-import-not-at-top

FAULT, FAULT_STEP = os.environ['CLAN_JAX_FAULT'].split(':')
FAULT_STEP = int(FAULT_STEP)
SIGNALS = {'sigkill': signal.SIGKILL, 'sigterm': signal.SIGTERM, 'sigint': signal.SIGINT}


def _reached_preemption(original):
  def patched(self, step):
    if step == FAULT_STEP and FAULT in SIGNALS:
      os.kill(os.getpid(), SIGNALS[FAULT])
    if step == FAULT_STEP and FAULT == 'pause':
      print(f'paused at step {step}', file=sys.stderr, flush=True)
      time.sleep(3600)
    if step == FAULT_STEP and FAULT == 'sigint_twice':
      for _ in range(2):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)  # the handler runs in between
    return original(self, step)
  return patched


def _save(original):
  def patched(self, step, state, **kwargs):
    saved = original(self, step, state, **kwargs)
    if step == FAULT_STEP and FAULT == 'sigkill_save' and saved:
      os.kill(os.getpid(), signal.SIGKILL)
    return saved
  return patched


def _jit_train_step(original):
  def patched(*args, **kwargs):
    train_step = original(*args, **kwargs)

    def step_fn(state, batch):
      if FAULT == 'nan' and int(state.step) + 1 == FAULT_STEP:
        batch = dict(batch, image=batch['image'] * jnp.nan)
      return train_step(state, batch)
    return step_fn
  return patched


if FAULT not in (*SIGNALS, 'sigint_twice', 'sigkill_save', 'nan', 'pause'):
  raise SystemExit(f'Unknown CLAN_JAX_FAULT {FAULT!r}.')
checkpointing.Checkpointer.reached_preemption = _reached_preemption(
    checkpointing.Checkpointer.reached_preemption)
checkpointing.Checkpointer.save = _save(checkpointing.Checkpointer.save)
steps.jit_train_step = _jit_train_step(steps.jit_train_step)
os.chdir(REPO)
if 'CLAN_JAX_FAULT_MODULE' in os.environ:
  runpy.run_module(os.environ['CLAN_JAX_FAULT_MODULE'], run_name='__main__', alter_sys=True)
else:
  sys.argv[0] = os.path.join(REPO, 'train.py')
  runpy.run_path(sys.argv[0], run_name='__main__')
