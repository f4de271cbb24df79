"""Demo: CLAN on the built-in synthetic fine-grained dataset, a few minutes on a CPU.

  python train.py                                   # this config
  python train.py --config=configs/default.py --config.model.use_clsa=False
"""
import ml_collections


def get_model_config() -> ml_collections.ConfigDict:
  """CLAN model fields. Every field marked 'choice' is not fixed by the paper."""
  m = ml_collections.ConfigDict()
  # A name in clan_jax/models/backbones.py: resnet18 | resnet34 | resnet50 |
  # resnet101 | resnet152 | vgg11 | vgg13 | vgg16 | vgg19 (and vgg*_bn).
  m.backbone = 'resnet50'
  # Channels of the first conv; torchvision's is 64. Smaller values give tiny test models.
  m.backbone_width = 64
  # The backbone's own options (its BackboneSpec.options), e.g. VGG's stage_output.
  m.backbone_options = ml_collections.ConfigDict()
  # Zero-init the last BatchNorm scale of every residual block (torchvision: off). ResNets only.
  m.zero_init_residual = False
  # The stage giving the top-level map L_N; None: the backbone's (ResNet: layer4).
  m.top_stage = ml_collections.FieldReference(None, field_type=str)
  # Backbone stages whose outputs are the mid-level maps L_s ("2-scale": layer2, layer3).
  m.mid_level_taps = ('layer2', 'layer3')
  # Ablation switches: both off = plain backbone with one classifier on L_N.
  m.use_clca = True
  m.use_clsa = True
  # The mid- and top-level blocks, names in clan_jax/models/blocks.py; each
  # takes its options from the group of its name below.
  m.mid_block = 'clca'
  m.top_block = 'clsa'

  m.clca = ml_collections.ConfigDict()
  m.clca.normalization = 'softmax'  # choice: softmax over keys | mean (divide by H_s*W_s)
  m.clca.inner_ratio = 0.5  # choice: inner width = C_s * inner_ratio
  m.clca.upsample = 'bilinear'  # choice: bilinear | nearest
  m.clca.scaled = False  # choice: False = non-local (no 1/sqrt(d)); True = scaled dot product
  # auto: cuDNN flash attention on GPU for bf16/fp16 where its head-dim limits
  # allow, else blockwise | blockwise: online-softmax blocks, memory O(N) on
  # every platform | reference: the full [N, N] matrix (clan_jax/models/attention.py).
  m.clca.attention_impl = 'auto'
  m.clca.attention_block_size = 512  # positions per query/key block of blockwise
  m.clca.zero_init = True  # choice: BatchNorm after W_y with scale 0, so CLCA starts as identity

  m.clsa = ml_collections.ConfigDict()
  m.clsa.kernel_size = 7  # choice
  m.clsa.downsample = 'avg'  # choice: avg | max | bilinear
  m.clsa.residual = False  # choice: False -> L_N * R(M_s); True -> L_N + L_N * R(M_s)
  # choice: batchnorm (as CBAM's spatial gate) | none, on the gate's logits before the
  # sigmoid; without it the gate saturates in CLAN (docs/ablation_study.md).
  m.clsa.norm = 'batchnorm'

  m.refined_top_merge = 'concat'  # choice: concat | sum, joins the per-scale CLSA outputs
  m.combine = 'mean_softmax'  # choice: mean_softmax | sum_logits, the final prediction
  # Compute dtype (bfloat16 on accelerators); params, BatchNorm statistics,
  # logits and the loss stay float32.
  m.dtype = 'float32'
  # Recompute activations in the backward pass to save memory:
  # none | stages (each ResNet stage) | clca (each CLCA block) | all.
  m.remat = 'none'
  # What a rematerialised module still saves (jax.checkpoint_policies): nothing_saveable |
  # dots_saveable | dots_with_no_batch_dims_saveable | everything_saveable.
  m.remat_policy = 'nothing_saveable'
  m.param_dtype = 'float32'
  return m


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  # --- Data ---
  config.dataset = 'clan_synthetic'  # a TFDS name
  config.data_dir = ml_collections.FieldReference(None, field_type=str)  # None: TFDS default
  config.train_split = 'train'
  config.eval_split = 'test'
  # Hold out the last N% of train_split (fixed images) to select models on
  # without the test set: it is evaluated beside eval_split, and the final
  # report adds the test accuracy at the best validation step. 0: off.
  config.validation_percent = 0
  # The synthetic dataset's size; ignored for other datasets.
  config.synthetic = ml_collections.ConfigDict()
  config.synthetic.num_classes = 32
  # As CUB-200-2011 (5,994 training images of 200 species): few images per
  # class is what makes real fine-grained data hard.
  config.synthetic.train_per_class = 30
  config.synthetic.test_per_class = 20
  config.synthetic.image_size = 144
  config.synthetic.seed = 0
  config.resize_size = 144  # shorter side before the crop
  config.image_size = 128  # crop fed to the model
  config.cache = True  # cache decoded examples in memory
  # Crop every image (train and eval) to its object's bounding box before
  # resizing; needs a dataset with a 'bbox' feature (CUB, Cars, Aircraft).
  config.crop_to_bbox = False
  config.batch_size = 32  # global, over all devices and processes
  config.eval_batch_size = 64
  config.prefetch_batches = 2

  # --- Model ---
  config.model = get_model_config()
  config.model.backbone = 'resnet18'
  config.model.backbone_width = 16
  config.model.zero_init_residual = True
  config.model.clca.inner_ratio = 0.5

  # --- Initialisation (README, "Pretrained weights") ---
  config.init = ml_collections.ConfigDict()
  # A torchvision / timm ResNet for the backbone: a .npz from
  # `python -m clan_jax.cli.convert_weights`, or a .safetensors / .pth converted
  # on the fly. Its depth and width must match config.model.
  config.init.backbone_weights = ml_collections.FieldReference(None, field_type=str)
  # A train.py workdir whose latest checkpoint gives every param and batch stat
  # (fine-tuning a trained CLAN; same model config and number of classes).
  config.init.checkpoint = ml_collections.FieldReference(None, field_type=str)

  # --- Loss and optimisation ---
  # Per-branch loss weights. Branch names: the mid-level taps (L̂_s, with
  # CLCA), 'top' (L_N) and 'refined' (L̂_N, with CLSA). Every name a ResNet CLAN
  # can have is listed, so any of them can be set from the command line; a
  # weight other than 1 for a branch the model does not have is an error.
  config.branch_weights = ml_collections.ConfigDict(
      {name: 1.0 for name in ('layer1', 'layer2', 'layer3', 'top', 'refined')})
  config.label_smoothing = 0.0
  config.num_epochs = 25.0
  config.num_train_steps = -1  # > 0 overrides num_epochs
  config.learning_rate = 0.1  # backbone's peak learning rate
  config.new_layers_lr_multiplier = 1.0  # CLCA, CLSA, heads: lr = multiplier * learning_rate
  config.warmup_epochs = 1.0
  config.momentum = 0.9
  config.nesterov = False
  config.weight_decay = 5e-4
  config.weight_decay_mode = 'l2'  # l2 (added to the gradient, as torch.optim.SGD) | decoupled
  config.grad_clip_norm = 0.0  # 0 disables clipping
  config.grad_accum_steps = 1
  # A step whose loss or gradient norm is not finite never updates the state.
  # 'stop': the run then stops with an error naming the step; 'skip': it goes
  # on, unless more than max_consecutive_skips such steps come in a row.
  config.on_nonfinite = 'stop'
  config.max_consecutive_skips = 10

  # --- Devices ---
  config.mesh = ml_collections.ConfigDict()
  # data: pure data parallel, the state replicated | fsdp: params and optimizer
  # state sharded over the fsdp axis (clan_jax/sharding.py). The batch is split
  # over data x fsdp devices.
  config.mesh.strategy = 'data'
  config.mesh.data = -1  # devices on the data axis; -1 = all (the rest under fsdp)
  config.mesh.fsdp = -1  # devices on the fsdp axis (strategy fsdp); -1 = the rest
  config.mesh.fsdp_min_size = 2**16  # arrays with fewer elements stay replicated

  # --- Logging, evaluation, checkpoints ---
  config.log_every_steps = 50
  config.eval_every_epochs = 5.0
  config.checkpoint_every_steps = 100
  config.keep_checkpoints = 2
  # Resume from the newest checkpoint that can be read when the latest cannot
  # (it is reported and moved aside); False: stop with an error instead.
  config.checkpoint_fallback = True
  return config
