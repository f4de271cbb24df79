"""Converts a torchvision / timm ResNet checkpoint to a `.npz` for config.init.backbone_weights.

  python -m clan_jax.tools.convert_weights --src=resnet50.pth --out=resnet50.npz
  python -m clan_jax.tools.convert_weights --src=model.safetensors --out=r50.npz --variant=resnet50

`.safetensors` needs no PyTorch; `.pth` does, and is read with
torch.load(weights_only=True). See clan_jax/pretrained.py for the mapping.
"""
from absl import app, flags

from clan_jax import pretrained, user_errors

flags.DEFINE_string('src', None, 'A torchvision / timm ResNet state dict: .safetensors or .pth.')
flags.DEFINE_string('out', None, 'The .npz to write.')
flags.DEFINE_string('variant', None, 'resnet18 ... resnet152; default: inferred from the '
                    'keys, and an error if given and the file is another.')
flags.mark_flags_as_required(['src', 'out'])
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  weights = pretrained.load_weights(FLAGS.src, FLAGS.variant)
  pretrained.save_npz(FLAGS.out, weights)
  head = f', fc head of {weights.num_classes} classes' if weights.num_classes else ''
  print(f'Wrote {FLAGS.out}: {weights.variant} of width {weights.width}, '
        f'{len(weights.arrays)} arrays{head}.')


if __name__ == '__main__':
  user_errors.run(main)
