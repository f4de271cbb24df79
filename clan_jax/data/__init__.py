"""Datasets: the synthetic fine-grained dataset and the TFDS input pipeline."""
from absl import logging
import tensorflow as tf

# TensorFlow only feeds the input pipeline: keep it off the accelerators, whose
# memory belongs to JAX. This must run before TensorFlow initialises devices.
try:
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError:
  logging.warning('TensorFlow was initialised before clan_jax.data was '
                  'imported: it may hold accelerator memory.')

# Importing a TFDS builder's module registers its name with tfds.builder().
from clan_jax.data import cub, fgvc_aircraft, stanford_cars, synthetic  # pylint: disable=g-import-not-at-top,unused-import
