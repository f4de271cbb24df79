"""Exports a trained CLAN's inference function as serialised StableHLO (`jax.export`).

  python -m clan_jax.cli.export --checkpoint=workdirs/default --out=/tmp/clan.jax_exported

writes the function to --out and its sidecar to `<out>.json`; how to run it
without this package is in `clan_jax.inference.export`, the library code.
"""
from absl import app, flags
import jax

from clan_jax.cli import program
from clan_jax.inference import export
from clan_jax.workdir import trained_model

flags.DEFINE_string('checkpoint', None, 'A train.py workdir (config.json, classes.json, '
                    'checkpoints/).', required=True)
flags.DEFINE_string('out', None, 'File for the serialised function; the sidecar goes '
                    'to <out>.json.', required=True)
flags.DEFINE_integer('step', None, 'Checkpoint step; default: the latest.')
flags.DEFINE_integer('batch_size', None, 'A fixed batch size; default: a symbolic one '
                     '(any batch size at run time).')
flags.DEFINE_list('platforms', None, 'Platforms the function runs on, e.g. cpu,cuda,tpu; '
                  'default: this machine\'s.')
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  program.check_storage('checkpoint', 'out')
  trained = trained_model.load(FLAGS.checkpoint, step=FLAGS.step)
  exported = export.export_inference(trained, batch_size=FLAGS.batch_size,
                                     platforms=FLAGS.platforms)
  export.save(exported, export.sidecar(trained, exported), FLAGS.out)
  print(f'Exported {FLAGS.checkpoint} step {trained.step} for {exported.platforms}, '
        f'input {exported.in_avals[0].str_short()}: {FLAGS.out}, '
        f'{FLAGS.out}{export.SIDECAR_SUFFIX}')


if __name__ == '__main__':
  jax.config.config_with_absl()
  program.run(main)
