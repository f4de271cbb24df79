"""Evaluation, prediction, attention maps and export of a trained workdir."""
import json
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
from PIL import Image
import pytest

from clan_jax.inference import attention_maps, predict, visualization
from clan_jax.workdir import compatibility, trained_model
from clan_jax.data import input_pipeline, synthetic
from clan_jax.experiments import shared_errors
from clan_jax.inference.evaluate import evaluate
from clan_jax.models.attention import spatial_attention
from clan_jax.training import optimizer, trainer
from configs import test as test_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def trained(data_dir, tmp_path_factory):
  """One tiny model trained for the whole module: (workdir, final eval metrics)."""
  config = test_config.get_config()
  config.data.data_dir = data_dir
  # Long enough that predictions are not all one class.
  config.num_train_steps = 16
  config.checkpoint.every_steps = 16
  workdir = str(tmp_path_factory.mktemp('workdir'))
  return workdir, trainer.train_and_evaluate(config, workdir)


def _run(module, *args, devices=1):
  env = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
  return subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def _eval_examples(model: trained_model.TrainedModel):
  """The real (unmasked) normalised images [N, S, S, 3] and labels [N] of the test split."""
  builder = input_pipeline.get_dataset_builder(model.config)
  eval_ds, _ = input_pipeline.create_eval_dataset(model.config, builder, 'test')
  batches = list(input_pipeline.as_numpy(eval_ds))
  return (np.concatenate([b['image'][b['mask'] > 0] for b in batches]),
          np.concatenate([b['label'][b['mask'] > 0] for b in batches]))


def _test_split_pixels(model: trained_model.TrainedModel) -> list[np.ndarray]:
  """The test split's images as stored (uint8 [H, W, 3]), in evaluation order."""
  builder = input_pipeline.get_dataset_builder(model.config)
  return [example['image'] for example in
          builder.as_dataset(split='test', shuffle_files=False).as_numpy_iterator()]


def test_evaluate_command_reproduces_the_training_eval(trained, tmp_path):
  """The same checkpoint, data and 8-device mesh as training's last eval: the same numbers."""
  workdir, train_results = trained
  result = _run('clan_jax.cli.evaluate', f'--checkpoint={workdir}', '--flip_tta',
                f'--out={tmp_path}', devices=8)
  assert result.returncode == 0, result.stderr[-3000:]
  with open(tmp_path / 'results.json') as f:
    results = json.load(f)
  assert results['devices'] == 8 and results['step'] == 16
  metrics = results['metrics']['no_tta']
  for key, value in train_results.items():
    if key.startswith('top') or key == 'num_examples':
      assert metrics[key] == value, key
  assert metrics['loss'] == pytest.approx(train_results['loss'], rel=1e-6)
  confusion = np.array(results['confusion_matrix']['no_tta'])
  assert confusion.sum() == 16 and list(confusion.sum(axis=1)) == [4] * 4
  assert np.trace(confusion) / 16 == metrics['top1_combined']
  assert list(results['per_class_top1']['no_tta'].values()) == list(np.diag(confusion) / 4)
  assert set(results['metrics']) == {'no_tta', 'flip_tta'}
  for mode in ('no_tta', 'flip_tta'):
    with Image.open(tmp_path / f'confusion_{mode}.png') as image:
      assert image.width >= 4 * 32
  assert 'combined' in result.stdout and 'Wrote' in result.stdout


def test_flip_tta_is_the_mean_over_both_predictions(trained):
  """On one device, with another batch size: the same plain numbers, and TTA as defined."""
  workdir, train_results = trained
  results = evaluate(workdir, flip_tta=True,
                     overrides={'mesh': {'data': 1}, 'data': {'eval_batch_size': 6}})
  assert results['devices'] == 1
  plain, tta = results['metrics']['no_tta'], results['metrics']['flip_tta']
  assert plain['top1_combined'] == train_results['top1_combined']
  assert tta['loss'] != pytest.approx(plain['loss'], rel=1e-4)

  model = trained_model.load(workdir)
  images, labels = _eval_examples(model)
  apply = jax.jit(lambda x: model.model.apply(model.variables, x, train=False))
  outputs, mirrored = apply(images), apply(images[:, :, ::-1])
  scores = {name: (outputs['branches'][name] + mirrored['branches'][name]) / 2
            for name in outputs['branches']}
  scores['combined'] = (outputs['combined'] + mirrored['combined']) / 2
  for name, s in scores.items():
    s = np.asarray(s)
    assert tta[f'top1_{name}'] == np.mean(np.argmax(s, -1) == labels), name
    top5 = np.argsort(-s, -1)[:, :5]
    assert tta[f'top5_{name}'] == np.mean(np.any(top5 == labels[:, None], -1)), name
  loss = sum(np.mean(-jax.nn.log_softmax(scores[name])[np.arange(len(labels)), labels])
             for name in outputs['branches'])
  assert tta['loss'] == pytest.approx(float(loss), rel=1e-5)
  with pytest.raises(FileNotFoundError, match=r'No checkpoint of step 3 .* steps are \[.*16\]'):
    evaluate(workdir, step=3)


def test_a_changed_optimizer_config_still_loads_and_evaluates(trained, tmp_path, monkeypatch):
  """Loading reads only the variables: no optimizer is built, none has to match."""
  workdir, train_results = trained
  copy = str(tmp_path / 'workdir')
  shutil.copytree(workdir, copy)
  with open(os.path.join(copy, trained_model.CONFIG_FILE)) as f:
    config = json.load(f)
  # Each of these changes the optax chain, and so the saved opt_state's structure.
  config['optim'].update(momentum=0.0, nesterov=True, grad_accum_steps=4,
                         weight_decay_mode='decoupled', grad_clip_norm=1.0)
  with open(os.path.join(copy, trained_model.CONFIG_FILE), 'w') as f:
    json.dump(config, f)
  def no_optimizer(*args, **kwargs):
    raise AssertionError('loading a trained model built an optimizer')
  monkeypatch.setattr(optimizer, 'create_optimizer', no_optimizer)
  results = evaluate(copy, overrides={'mesh': {'data': 1}, 'data': {'eval_batch_size': 6}})
  assert results['step'] == 16
  assert results['metrics']['no_tta']['top1_combined'] == train_results['top1_combined']


def test_a_workdir_from_before_the_registries_still_loads_and_resumes(trained, tmp_path):
  """config.json without the model fields added since
  (compatibility.added_model_fields), with the old names of renamed fields
  (compatibility.RENAMED_FIELDS), and flat, as before the fields were grouped
  (compatibility.FLAT_FIELDS)."""
  workdir, _ = trained
  copy = str(tmp_path / 'workdir')
  shutil.copytree(workdir, copy)
  with open(os.path.join(copy, trained_model.CONFIG_FILE)) as f:
    config = json.load(f)
  # A field whose value here is its old default is what an older config lacks.
  for field, default in compatibility.added_model_fields().items():
    *groups, name = field.split('.')
    parent = config['model']
    for group in groups:
      parent = parent[group]
    if parent[name] == default:
      del parent[name]
  for old, new in compatibility.RENAMED_FIELDS.items():
    (group, name), (new_group, new_name) = old.split('.'), new.split('.')
    config[group][name] = config[new_group].pop(new_name)
  for old, new in compatibility.FLAT_FIELDS.items():
    group, name = new.split('.')
    config[old] = config[group].pop(name)
  for group in ('data', 'loss', 'optim', 'checkpoint'):
    assert not config.pop(group)
  with open(os.path.join(copy, trained_model.CONFIG_FILE), 'w') as f:
    json.dump(config, f)
  loaded = trained_model.load(copy)
  assert loaded.config.model.mid_block == 'clca' and loaded.config.model.top_stage is None
  assert {'clca_layer2', 'clsa_layer3'} <= set(loaded.variables['params'])
  # Resuming it with today's config of the same model is not "another model".
  current = test_config.get_config()
  current.data.data_dir = config['data_dir']  # the flat layout's name
  trained_model.check_same_model(copy, current)


def test_predict_agrees_with_the_evaluation_path(trained, tmp_path):
  workdir, _ = trained
  model = trained_model.load(workdir)
  images, _ = _eval_examples(model)
  eval_probs = np.asarray(model.model.apply(model.variables, images, train=False)['combined'])
  pixels = _test_split_pixels(model)[:6]
  pngs = []
  for i, image in enumerate(pixels):
    pngs.append(str(tmp_path / f'{i}.png'))
    Image.fromarray(image).save(pngs[-1])
    # Lossless, so the very pixels that evaluation preprocesses.
    np.testing.assert_array_equal(
        input_pipeline.preprocess_for_eval(input_pipeline.read_image(pngs[-1]), model.config),
        images[i])
  jpeg = str(tmp_path / 'lossy.jpg')
  Image.fromarray(pixels[0]).save(jpeg, quality=90)
  not_an_image = str(tmp_path / 'notes.png')
  with open(not_an_image, 'w') as f:
    f.write('not an image')
  # Other sizes and modes: larger and not square, greyscale, with alpha.
  bird = synthetic.render_bird(synthetic.species(1), np.random.default_rng(0), 90)
  odd = {'wide.png': Image.fromarray(bird[:60]), 'grey.jpg': Image.fromarray(bird).convert('L'),
         'rgba.png': Image.fromarray(bird).convert('RGBA')}
  for name, image in odd.items():
    image.save(tmp_path / name)

  paths = [*pngs[:3], not_an_image, *pngs[3:], jpeg, *(str(tmp_path / n) for n in odd)]
  predictions = predict.predict_files(model, paths, top_k=3, batch_size=4)
  assert [p.path for p in predictions] == paths
  by_path = {p.path: p for p in predictions}
  assert by_path[not_an_image].top_k is None
  assert 'notes.png is not an image' in by_path[not_an_image].error
  for i, png in enumerate(pngs):
    names, probs = zip(*by_path[png].top_k)
    assert names[0] == model.class_names[np.argmax(eval_probs[i])]
    np.testing.assert_allclose(probs, np.sort(eval_probs[i])[::-1][:3], rtol=1e-5, atol=1e-6)
  # JPEG changes pixels: compare with evaluation's operations on its decoded pixels.
  with open(jpeg, 'rb') as f:
    decoded = input_pipeline.eval_crop(
        input_pipeline.decode_and_resize(f.read(), model.config.data.resize_size),
        model.config.data.image_size)
  jpeg_probs = model.model.apply(model.variables, np.asarray(decoded)[None],
                                 train=False)['combined'][0]
  assert by_path[jpeg].top_k[0][0] == model.class_names[int(np.argmax(jpeg_probs))]
  assert by_path[jpeg].top_k[0][1] == pytest.approx(float(np.max(jpeg_probs)), rel=1e-5)
  for name in odd:
    assert len(by_path[str(tmp_path / name)].top_k) == 3


def test_predict_command_reports_bad_files_and_writes_attention_maps(trained, tmp_path):
  workdir, _ = trained
  bird = synthetic.render_bird(synthetic.species(2), np.random.default_rng(1), 48)
  Image.fromarray(bird[:40]).save(tmp_path / 'bird.png')  # 48 x 40
  (tmp_path / 'empty.jpg').write_bytes(b'')
  result = _run('clan_jax.cli.predict', f'--checkpoint={workdir}', '--top_k=2',
                f'--attention_dir={tmp_path / "attention"}', '--query_point=20,18',
                str(tmp_path / 'bird.png'), str(tmp_path / 'empty.jpg'),
                str(tmp_path / 'missing.png'), devices=2)
  assert result.returncode == 1, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  assert lines[0].endswith('bird.png') and len(lines[1].split()) == 2
  assert 'empty.jpg is not an image' in result.stderr
  assert 'missing.png: no such file' in result.stderr
  assert '2 of 3 files could not be read' in result.stderr
  written = sorted(os.listdir(tmp_path / 'attention'))
  assert written == [f'bird.png_{kind}_{tap}.png' for kind in ('clca', 'clsa')
                     for tap in ('layer2', 'layer3')]
  for name in written:
    with Image.open(tmp_path / 'attention' / name) as image:
      # The 48 x 40 overlay, under its title and beside its colour bar.
      assert image.width > 48 and image.height > 40


def test_attention_maps_are_the_models(trained, tmp_path):
  workdir, _ = trained
  model = trained_model.load(workdir)
  config = model.config
  image = synthetic.render_bird(synthetic.species(3), np.random.default_rng(2), 72)[:, :64]
  # 72 x 64 resizes to 40 x 36 (shorter side 36): the crop box is rows 4..36
  # and columns 2..34 of the resized image, or these in the image's pixels.
  box = (2 * 64 / 36, 4 * 72 / 40, 34 * 64 / 36, 36 * 72 / 40)
  query = (box[0] + 0.2, box[3] - 0.2)  # bottom-left corner of the crop
  (maps,) = attention_maps.compute(model, [image], [query])
  np.testing.assert_allclose(maps.crop_box, box)
  assert maps.query_cells == {'clca': {'layer2': (3, 0), 'layer3': (1, 0)}}

  # Independently: the outputs of the modules that produce the maps.
  inputs = np.asarray(input_pipeline.preprocess_for_eval(image, config))[None]
  names = ('bn', 'w_theta', 'w_phi', 'w_k')  # 'bn': CLSA's gate logits
  _, state = model.model.apply(model.variables, inputs, train=False,
                               capture_intermediates=lambda m, _: m.name in names,
                               mutable=['intermediates'])
  captured = state['intermediates']
  for tap in ('layer2', 'layer3'):
    (logits,) = captured[f'clsa_{tap}']['bn']['__call__']
    np.testing.assert_allclose(maps.blocks['clsa'][tap], jax.nn.sigmoid(logits[0, ..., 0]), rtol=1e-6)
    theta, phi, value = (captured[f'clca_{tap}'][n]['__call__'][0][0] for n in names[1:])
    height, width, depth = theta.shape
    row, col = maps.query_cells['clca'][tap]
    expected = jax.nn.softmax(phi.reshape(-1, depth) @ theta[row, col])
    np.testing.assert_allclose(maps.blocks['clca'][tap].ravel(), expected, rtol=1e-4, atol=1e-7)
    # The row weights the values exactly as CLCA's own attention does.
    attended = spatial_attention(theta.reshape(1, -1, depth), phi.reshape(1, -1, depth),
                                 value.reshape(1, -1, depth))[0, row * width + col]
    np.testing.assert_allclose(maps.blocks['clca'][tap].ravel() @ value.reshape(-1, depth),
                               attended, rtol=1e-4, atol=1e-5)

  pictures = attention_maps.overlays(maps)
  assert all(picture.shape == (72, 64, 3) for picture in pictures.values())
  # Left of the crop box, the image is only dimmed.
  np.testing.assert_array_equal(pictures['clsa_layer2'][:, 0],
                                np.round(0.4 * image[:, 0]).astype(np.uint8))
  with pytest.raises(ValueError, match='outside the part of the 64x72 image that the model sees'):
    attention_maps.compute(model, [image], [(0.5, 0.5)])


@pytest.fixture(scope='module')
def two_birds_maps(trained):
  """The attention maps of two birds, 72 x 64 and 56 x 56, the first with its query off-centre."""
  workdir, _ = trained
  model = trained_model.load(workdir)
  images = [synthetic.render_bird(synthetic.species(3), np.random.default_rng(2), 72)[:, :64],
            synthetic.render_bird(synthetic.species(1), np.random.default_rng(5), 56)]
  return attention_maps.compute(model, images, [(20.25, 40), None])


def test_saved_attention_pictures_are_the_overlays_labelled(two_birds_maps, tmp_path):
  maps = two_birds_maps[0]
  assert attention_maps.titles(maps) == {
      'clsa_layer2': 'CLSA M_s · layer2', 'clsa_layer3': 'CLSA M_s · layer3',
      'clca_layer2': 'CLCA · layer2 · query (20.2, 40)',
      'clca_layer3': 'CLCA · layer3 · query (20.2, 40)'}
  bare = attention_maps.overlays(maps)
  labelled = attention_maps.labelled_overlays(maps)
  assert list(labelled) == list(bare)
  paths = attention_maps.save(maps, str(tmp_path), 'bird')
  assert paths == [str(tmp_path / f'bird_{key}.png') for key in labelled]
  grids = {f'{name}_{tap}': grid for name, tap_maps in maps.blocks.items()
           for tap, grid in tap_maps.items()}
  strips = {}
  for key, path in zip(labelled, paths):
    with Image.open(path) as saved:
      np.testing.assert_array_equal(np.asarray(saved), labelled[key])
    picture, grid = labelled[key], grids[key]
    # The title strip above the overlay, the colour bar to its right.
    top = picture.shape[0] - 72
    assert top > 0 and picture.shape[1] > 64
    np.testing.assert_array_equal(picture[top:, :64], bare[key])
    bar = visualization.colorbar(72, float(grid.min()), float(grid.max()))
    np.testing.assert_array_equal(picture[top:, 64:64 + bar.shape[1]], bar)
    strip = picture[:top]
    assert (strip.min(axis=-1) < 128).any() and (strip == 255).any()  # ink on white
    strips[key] = strip
  # Each title names its own block and tap.
  assert len({strip.tobytes() for strip in strips.values()}) == 4


def test_colour_bar_runs_through_viridis_and_names_its_ends():
  bar = visualization.colorbar(50, 0.012, 0.093)
  assert bar.shape[0] == 50 and bar.shape[2] == 3
  # One column of the bar is the colormap from 1 (top row) down to 0 (bottom).
  ramp = visualization.colorize(np.linspace(1, 0, 50))
  columns = [c for c in range(bar.shape[1]) if np.array_equal(bar[:, c], ramp)]
  assert columns and columns == list(range(columns[0], columns[-1] + 1))
  np.testing.assert_array_equal(bar[0, columns[0]], (253, 231, 37))  # viridis' yellow
  np.testing.assert_array_equal(bar[-1, columns[0]], (68, 1, 84))  # and its dark blue
  labels = bar[:, columns[-1] + 1:]
  assert (labels.min(axis=-1) < 128)[:15].any() and (labels.min(axis=-1) < 128)[-15:].any()
  assert visualization.scale_labels(0.012, 0.093) == ('0.012', '0.093')
  # More digits only where fewer would print both ends alike.
  assert visualization.scale_labels(0.50012, 0.50034) == ('0.5001', '0.5003')
  assert visualization.scale_labels(0.50012, 0.50014) == ('0.50012', '0.50014')
  assert visualization.scale_labels(0.5, 0.5) == ('0.5', '0.5')
  # A picture shorter than two lines of text still gets both labels.
  assert visualization.colorbar(8, 0.0, 1.0).shape[0] > 8


def test_attention_panel_lays_out_each_image_and_its_labelled_pictures(two_birds_maps):
  panel = attention_maps.panel(two_birds_maps)
  assert panel.dtype == np.uint8 and panel.ndim == 3 and panel.shape[2] == 3
  # One image's panel is its row of the panel of several.
  first = attention_maps.panel(two_birds_maps[0])
  np.testing.assert_array_equal(panel[:first.shape[0], :first.shape[1]], first)
  top = 0
  for maps in two_birds_maps:
    image = visualization.labelled(maps.image, 'image')
    pictures = [image, *attention_maps.labelled_overlays(maps).values()]
    left = 0
    for picture in pictures:
      height, width = picture.shape[:2]
      np.testing.assert_array_equal(panel[top:top + height, left:left + width], picture)
      left += width + attention_maps._PANEL_GAP
    # The original image, as given, under its title.
    strip = image.shape[0] - maps.image.shape[0]
    np.testing.assert_array_equal(image[strip:, :maps.image.shape[1]], maps.image)
    top += max(picture.shape[0] for picture in pictures) + attention_maps._PANEL_GAP
  assert panel.shape[0] == top - attention_maps._PANEL_GAP


def test_exported_model_runs_without_the_package(trained, tmp_path):
  workdir, _ = trained
  out = tmp_path / 'clan.jax_exported'
  result = _run('clan_jax.cli.export', f'--checkpoint={workdir}', f'--out={out}')
  assert result.returncode == 0, result.stderr[-3000:]
  with open(f'{out}.json') as f:
    info = json.load(f)
  assert info['class_names'] == [f'species_{i:02d}' for i in range(4)]
  assert info['input']['shape'] == ['batch', 32, 32, 3]
  assert info['mean_rgb'] == list(input_pipeline.MEAN_RGB)

  model = trained_model.load(workdir)
  images, _ = _eval_examples(model)
  np.save(tmp_path / 'images.npy', images)
  # A fresh interpreter, outside the repository, that never imports clan_jax.
  script = textwrap.dedent(f'''
      import sys
      import jax
      import numpy as np
      with open({str(out)!r}, 'rb') as f:
        infer = jax.export.deserialize(bytearray(f.read()))
      images = np.load({str(tmp_path / 'images.npy')!r})
      outputs = {{'all': infer.call(images), 'three': infer.call(images[:3])}}
      np.savez({str(tmp_path / 'outputs.npz')!r}, **{{
          f'{{size}}/{{jax.tree_util.keystr(path)}}': leaf for size, tree in outputs.items()
          for path, leaf in jax.tree.leaves_with_path(tree)}})
      assert not any(m.startswith('clan_jax') for m in sys.modules), 'imported clan_jax'
      ''')
  fresh = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
  assert fresh.returncode == 0, fresh.stderr[-3000:]
  reloaded = np.load(tmp_path / 'outputs.npz')
  live = model.model.apply(model.variables, images, train=False)
  for path, leaf in jax.tree.leaves_with_path(live):
    key = jax.tree_util.keystr(path)
    np.testing.assert_allclose(reloaded[f'all/{key}'], leaf, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reloaded[f'three/{key}'], leaf[:3], rtol=1e-5, atol=1e-6)
  assert len(reloaded.files) == 2 * 5


def test_shared_errors_are_the_runs_errors_and_their_birds_are_redrawn_exactly(
    trained, tmp_path):
  workdir, train_results = trained
  summary = shared_errors.write([workdir, workdir], str(tmp_path))
  # One run twice: every error is shared, as many as its evaluation counted.
  errors = round((1 - train_results['top1_combined']) * 16)
  assert [run['errors'] for run in summary['runs']] == [errors, errors]
  assert len(summary['shared_errors']) == errors
  assert json.loads((tmp_path / shared_errors.ERRORS_FILE).read_text()) == summary
  with Image.open(tmp_path / shared_errors.GALLERY_FILE) as gallery:
    assert gallery.width > 1
  for error in summary['shared_errors']:
    assert error['predicted'] == error['predictions'][0] != error['label']
    # The test config's 4 species differ in the wing alone.
    assert list(error['details']) == ['wing'] and error['changed_pixels_in_crop'] > 0
  assert summary['nearest_species']['images_with_no_changed_pixel'] == 0
  assert summary['ceiling'] == {'images_like_another_species': 0, 'top1': 1.0}

  # A redrawn example is the stored one, and another species' details change
  # the bird's detail only: a few percent of the pixels.
  model = trained_model.load(workdir)
  dataset = shared_errors.synthetic_config(model.config)
  builder = input_pipeline.get_dataset_builder(model.config)
  for example in list(builder.as_dataset(split='test').as_numpy_iterator())[:4]:
    example_id = example['id'].decode()
    label = example['label']
    np.testing.assert_array_equal(shared_errors.redrawn(dataset, example_id, label),
                                  example['image'])
    other = shared_errors.redrawn(dataset, example_id, (label + 1) % 4)
    pixels, levels = shared_errors.difference(other, example['image'])
    assert 0 < pixels < 0.05 * example['image'][..., 0].size and levels > 16
