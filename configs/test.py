"""A tiny CLAN on a tiny synthetic dataset, for tests: seconds on a CPU."""
from configs import default


def get_config():
  config = default.get_config()
  config.synthetic.num_classes = 4
  config.synthetic.train_per_class = 8
  config.synthetic.test_per_class = 4
  config.synthetic.image_size = 36
  config.resize_size = 36
  config.image_size = 32
  config.batch_size = 8
  config.eval_batch_size = 8
  config.model.backbone = 'resnet18'
  config.model.backbone_width = 4
  config.num_train_steps = 4
  config.warmup_epochs = 0.0
  config.learning_rate = 0.05
  config.log_every_steps = 2
  config.eval_every_epochs = 100.0
  config.checkpoint_every_steps = 2
  return config
