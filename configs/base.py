"""The paper's setting: CLAN 2-scale on ResNet-50 at 448x448. Every field is here.

The other configs override it: cub.py, cars.py and aircraft.py set the
dataset; default.py (the demo that `python train.py` runs) a few fields; the
recipe is not in the available text of the paper, so these are the field's
usual values (see CLAN_SPEC.md): resize to 512, random crop 448, flip; SGD
momentum 0.9, cosine schedule over 100 epochs, new layers (CLCA, CLSA, heads)
at 10x the backbone's learning rate. Fields are grouped: data, model, init,
loss, optim, mesh, checkpoint; the run's length, seed and cadence are at the top.
"""
from collections.abc import Sequence

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
  # Ablation switches: the mid-level block (mid_block, CLCA by default) and the
  # top-level block (top_block, CLSA by default) on or off; both off = plain
  # backbone with one classifier on L_N.
  m.use_mid_block = True
  m.use_top_block = True
  # Their names before any block could be configured, aliases (one shared
  # value) so that `--config.model.use_clca=False` still works; they are
  # neither checked nor written (clan_jax/workdir/compatibility.py, RENAMED_FIELDS).
  m.use_clca = m.get_ref('use_mid_block')
  m.use_clsa = m.get_ref('use_top_block')
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
  # none | stages (each ResNet stage) | mid_blocks (each mid-level block, e.g. CLCA) | all.
  m.remat = 'none'
  # What a rematerialised module still saves (jax.checkpoint_policies): nothing_saveable |
  # dots_saveable | dots_with_no_batch_dims_saveable | everything_saveable.
  m.remat_policy = 'nothing_saveable'
  m.param_dtype = 'float32'
  return m


def get_data_config(dataset: str) -> ml_collections.ConfigDict:
  """Where the images come from and how they are read: `evaluate --config` takes this group."""
  d = ml_collections.ConfigDict()
  d.dataset = dataset  # a TFDS name
  d.data_dir = ml_collections.FieldReference(None, field_type=str)  # None: TFDS default
  d.train_split = 'train'
  d.eval_split = 'test'
  # Hold out the last N% of train_split (fixed images) to select models on
  # without the test set: it is evaluated beside eval_split, and the final
  # report adds the test accuracy at the best validation step. 0: off.
  d.validation_percent = 0
  # The synthetic dataset's size; ignored for other datasets.
  d.synthetic = ml_collections.ConfigDict()
  d.synthetic.num_classes = 32
  # As CUB-200-2011 (5,994 training images of 200 species): few images per
  # class is what makes real fine-grained data hard.
  d.synthetic.train_per_class = 30
  d.synthetic.test_per_class = 20
  d.synthetic.image_size = 144
  d.synthetic.seed = 0
  # Harder for every model alike (clan_jax/data/synthetic.py): birds down to
  # this body length in image widths (up to 0.18), and up to this many leaves
  # drawn in front of each bird.
  d.synthetic.min_scale = 0.15
  d.synthetic.occluders = 0
  # The source task (clan_jax/data/synthetic.py): the pretraining task of
  # config.init.source_pretraining, disjoint from the species.
  d.synthetic.source = False
  d.resize_size = 512  # shorter side before the crop
  d.image_size = 448  # crop fed to the model
  d.cache = False  # cache decoded examples in memory; 448px datasets do not fit comfortably
  # Crop every image (train and eval) to its object's bounding box before
  # resizing; needs a dataset with a 'bbox' feature (CUB, Cars, Aircraft).
  d.crop_to_bbox = False
  d.batch_size = 32  # global, over all devices and processes
  d.eval_batch_size = 64
  d.prefetch_batches = 2
  return d


def get_config(dataset: str = 'cub_200_2011') -> ml_collections.ConfigDict:
  """The paper-setting config for the TFDS dataset named `dataset`."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = get_data_config(dataset)
  config.model = get_model_config()  # ResNet-50, every spec default

  # --- Initialisation (README, "Pretrained weights") ---
  config.init = ml_collections.ConfigDict()
  # A torchvision / timm backbone: a .npz from
  # `python -m clan_jax.cli.convert_weights`, or a .safetensors / .pth converted
  # on the fly. Its depth and width must match config.model.
  config.init.backbone_weights = ml_collections.FieldReference(None, field_type=str)
  # A train.py workdir whose latest checkpoint gives every param and batch stat
  # (fine-tuning a trained CLAN; same model config and number of classes).
  config.init.checkpoint = ml_collections.FieldReference(None, field_type=str)
  # The paper's regime in miniature, for the synthetic dataset: pretrain the
  # plain backbone on a coarser synthetic task of other species, once (cached
  # under the data directory), then fine-tune from it through backbone_weights
  # (clan_jax/experiments/source_pretraining.py). The rest of the pretraining
  # run (backbone, sizes, optimizer) is this config's.
  config.init.source_pretraining = ml_collections.ConfigDict()
  config.init.source_pretraining.enabled = False
  config.init.source_pretraining.train_per_class = 120  # images per source class (16 classes)
  config.init.source_pretraining.num_train_steps = 600
  config.init.source_pretraining.learning_rate = 0.1
  config.init.source_pretraining.warmup_epochs = 1.0

  config.loss = ml_collections.ConfigDict()
  # Per-branch loss weights. Branch names: the mid-level taps (L̂_s, with
  # CLCA), 'top' (L_N) and 'refined' (L̂_N, with CLSA). Every name a ResNet CLAN
  # can have is listed, so any of them can be set from the command line; a
  # weight other than 1 for a branch the model does not have is an error.
  config.loss.branch_weights = ml_collections.ConfigDict(
      {name: 1.0 for name in ('layer1', 'layer2', 'layer3', 'top', 'refined')})
  config.loss.label_smoothing = 0.0

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 0.01  # backbone's peak learning rate
  config.optim.new_layers_lr_multiplier = 10.0  # CLCA, CLSA, heads: lr = multiplier * learning_rate
  config.optim.warmup_epochs = 2.0
  config.optim.momentum = 0.9
  config.optim.nesterov = False
  config.optim.weight_decay = 5e-4
  config.optim.weight_decay_mode = 'l2'  # l2 (added to the gradient, as torch.optim.SGD) | decoupled
  config.optim.grad_clip_norm = 0.0  # 0 disables clipping
  config.optim.grad_accum_steps = 1

  config.mesh = ml_collections.ConfigDict()
  # data: pure data parallel, the state replicated | fsdp: params and optimizer
  # state sharded over the fsdp axis (clan_jax/sharding.py). The batch is split
  # over data x fsdp devices.
  config.mesh.strategy = 'data'
  config.mesh.data = -1  # devices on the data axis; -1 = all (the rest under fsdp)
  config.mesh.fsdp = -1  # devices on the fsdp axis (strategy fsdp); -1 = the rest
  config.mesh.fsdp_min_size = 2**16  # arrays with fewer elements stay replicated

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 1000
  config.checkpoint.keep = 2
  # Resume from the newest checkpoint that can be read when the latest cannot
  # (it is reported and moved aside); False: stop with an error instead.
  config.checkpoint.fallback = True

  # --- The run: length, cadence, numerics ---
  config.num_epochs = 100.0
  config.num_train_steps = -1  # > 0 overrides num_epochs
  config.log_every_steps = 50
  config.eval_every_epochs = 10.0
  # A step whose loss or gradient norm is not finite never updates the state.
  # 'stop': the run then stops with an error naming the step; 'skip': it goes
  # on, unless more than max_consecutive_skips such steps come in a row.
  config.on_nonfinite = 'stop'
  config.max_consecutive_skips = 10
  return config


def set_backbone(config: ml_collections.ConfigDict, backbone: str, taps: Sequence[str],
                 **backbone_options) -> None:
  """CLAN on `backbone` (a name in clan_jax/models/backbones.py), one scale per tap.

  `taps` are stage names of the backbone, e.g. its BackboneSpec.taps for the
  number of scales (a config names them itself: configs import no library
  code); every branch weighs 1. `backbone_options` replace the previous
  backbone's; zero_init_residual, a ResNet option, is off unless given there.
  """
  config.model.backbone = backbone
  config.model.backbone_options = ml_collections.ConfigDict(backbone_options)
  config.model.zero_init_residual = False
  config.model.mid_level_taps = tuple(taps)
  config.loss.branch_weights = ml_collections.ConfigDict(
      {**{tap: 1.0 for tap in taps}, 'top': 1.0, 'refined': 1.0})
