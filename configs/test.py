"""A tiny CLAN on a tiny synthetic dataset, for tests: seconds on a CPU."""
from configs import default


def get_config():
  config = default.get_config()
  config.init.source_pretraining.enabled = False
  config.data.synthetic.num_classes = 4
  config.data.synthetic.train_per_class = 8
  config.data.synthetic.test_per_class = 4
  config.data.synthetic.image_size = 36
  config.data.resize_size = 36
  config.data.image_size = 32
  config.data.batch_size = 8
  config.data.eval_batch_size = 8
  config.model.backbone_width = 4
  config.num_train_steps = 4
  config.optim.warmup_epochs = 0.0
  config.optim.learning_rate = 0.05
  config.log_every_steps = 2
  config.eval_every_epochs = 100.0
  config.checkpoint.every_steps = 2
  return config
