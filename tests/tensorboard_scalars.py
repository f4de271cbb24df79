"""The scalars a run wrote to its workdir's TensorBoard event files, as TensorBoard reads them."""
import os

from tensorboard.backend.event_processing import event_accumulator
import tensorflow as tf


def read(workdir: str | os.PathLike) -> dict[str, dict[int, float]]:
  """{tag: {step: value}} of every scalar in `workdir`'s event files."""
  events = event_accumulator.EventAccumulator(
      str(workdir), size_guidance={event_accumulator.TENSORS: 0}).Reload()  # 0: keep all
  return {tag: {event.step: float(tf.make_ndarray(event.tensor_proto))
                for event in events.Tensors(tag)}
          for tag in events.Tags()[event_accumulator.TENSORS]
          if events.SummaryMetadata(tag).plugin_data.plugin_name == 'scalars'}
