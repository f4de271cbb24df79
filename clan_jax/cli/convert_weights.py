"""Converts a torchvision / timm backbone checkpoint to a `.npz` for config.init.backbone_weights.

  python -m clan_jax.cli.convert_weights --src=resnet50.pth --out=resnet50.npz
  python -m clan_jax.cli.convert_weights --src=model.safetensors --out=r50.npz --variant=resnet50
  python -m clan_jax.cli.convert_weights --src=vgg16_bn.pth --out=vgg16_bn.npz

`.safetensors` needs no PyTorch; `.pth` does, and is read with
torch.load(weights_only=True). Any backbone of clan_jax/models/backbones.py
converts (ResNets, VGGs); see clan_jax/models/torchvision_weights.py for the mapping.
"""
from absl import app, flags

from clan_jax.cli import program
from clan_jax.models import torchvision_weights

flags.DEFINE_string('src', None, 'A torchvision / timm state dict: .safetensors or .pth.')
flags.DEFINE_string('out', None, 'The .npz to write.')
flags.DEFINE_string('variant', None, 'A name in clan_jax/models/backbones.py (resnet50, '
                    'vgg16_bn, ...); default: inferred from the keys, and an error if given '
                    'and the file is another.')
flags.mark_flags_as_required(['src', 'out'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  program.check_storage('src', 'out')
  weights = torchvision_weights.load_weights(FLAGS.src, FLAGS.variant)
  torchvision_weights.save_npz(FLAGS.out, weights)
  head = f', fc head of {weights.num_classes} classes' if weights.num_classes else ''
  print(f'Wrote {FLAGS.out}: {weights.variant} of width {weights.width}, '
        f'{len(weights.arrays)} arrays{head}.')


if __name__ == '__main__':
  program.run(main)
