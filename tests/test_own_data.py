"""Your own data (issue 18) on files written here: image folders (PNG, JPEG, 16-bit PNG,
MONOCHROME1 and MONOCHROME2 DICOM with rescale and a VOI window), an unlabelled folder, a
CheXpert-style CSV with 1 / 0 / -1 / blank, MedMNIST npz files (single- and multi-label).
Each is prepared and trained for 2 steps and evaluated in this process (16 px, resnet_tiny;
one train-step compilation shared by all); bad input is one line and exit 2 with nothing
left behind, Ctrl-C exit 130 (issue 20)."""
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import types

import numpy as np
from PIL import Image
import pytest

from conftest import REPO_ROOT, subprocess_env
from test_lifecycle import _tiny_config
from simclr_jax import data
from simclr_jax import prepare
from simclr_jax.data import images
from simclr_jax.data import labels as labels_lib

SIZE = 16
LABELS = ['Atelectasis', 'Cardiomegaly', 'Effusion']


def _png(path, pixels):
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(pixels).save(path)


def _dicom(path, pixels, *, photometric, bits_stored, patient, rescale=None, window=None):
  """A DICOM file written with pydicom: uint16 pixels, optional slope/intercept, window."""
  from pydicom.dataset import Dataset, FileMetaDataset
  from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
  meta = FileMetaDataset()
  meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
  meta.MediaStorageSOPInstanceUID = generate_uid()
  meta.TransferSyntaxUID = ExplicitVRLittleEndian
  dataset = Dataset()
  dataset.file_meta = meta
  dataset.SOPClassUID = meta.MediaStorageSOPClassUID
  dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
  dataset.PatientID, dataset.Modality = patient, 'DX'
  dataset.Rows, dataset.Columns = pixels.shape
  dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, photometric
  dataset.BitsAllocated, dataset.BitsStored = 16, bits_stored
  dataset.HighBit, dataset.PixelRepresentation = bits_stored - 1, 0
  if rescale:
    dataset.RescaleSlope, dataset.RescaleIntercept = rescale
  if window:
    dataset.WindowCenter, dataset.WindowWidth = window
  dataset.PixelData = pixels.astype(np.uint16).tobytes()
  path.parent.mkdir(parents=True, exist_ok=True)
  dataset.save_as(path, enforce_file_format=True)


def _run_prepare(*argv):
  """prepare's CLI in this process: (exit status, stdout, stderr)."""
  import tensorflow_datasets as tfds
  tfds.disable_progress_bar()  # as prepare.main does
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    status = prepare.run([str(arg) for arg in argv])
  return status, out.getvalue(), err.getvalue()


def _prepared(*argv) -> dict:
  status, out, err = _run_prepare(*argv)
  assert status == 0, err
  lines = out.strip().splitlines()
  assert lines[-2].startswith("use: config.dataset='")
  return json.loads(lines[-1])


def _write_files(root, rng):
  """Every input layout; returns what the tests compare against."""
  noise = lambda: rng.integers(0, 256, (20, 24), dtype=np.uint8)  # pylint: disable=unnecessary-lambda-assignment
  expected = {}
  # Single-label folder with split folders: every file format, and what is skipped.
  for split, per_class in (('train', 4), ('test', 2)):
    for cls in ('normal', 'pneumonia'):
      for i in range(per_class):
        _png(root / 'xrays' / split / cls / f'{cls}{i}.png', noise())
  sixteen = rng.integers(0, 65536, (20, 24)).astype(np.uint16)
  _png(root / 'xrays/train/normal/sixteen.png', sixteen)
  expected['sixteen.png'] = ((sixteen.astype(np.int64) * 255 + 32767) // 65535)
  _png(root / 'xrays/train/pneumonia/photo.jpg', np.stack([noise()] * 3, -1))
  stored12 = rng.integers(0, 4096, (20, 24))
  _dicom(root / 'xrays/train/normal/window.dcm', stored12, photometric='MONOCHROME2',
         bits_stored=12, patient='A', rescale=(2, -100), window=(3000, 2000))
  value, centre, width = stored12 * 2.0 - 100, 3000 - 0.5, 2000 - 1  # DICOM LINEAR window
  expected['window.dcm'] = np.round(np.clip(((value - centre) / width + 0.5) * 255, 0, 255))
  stored16 = rng.integers(0, 65536, (20, 24))
  _dicom(root / 'xrays/test/pneumonia/IM0001', stored16, photometric='MONOCHROME1',
         bits_stored=16, patient='B')  # no extension: found by its DICM marker
  expected['IM0001'] = 255 - (stored16 * 255 + 32767) // 65535  # inverted, 16 -> 8 bits
  _png(root / 'xrays/train/pneumonia/blank.png', np.zeros((20, 20), np.uint8))
  _png(root / 'xrays/train/pneumonia/tiny.png', np.full((1, 1), 7, np.uint8))
  (root / 'xrays/train/normal/broken.png').write_bytes(b'\x89PNG not really')
  (root / 'xrays/train/normal/notes.txt').write_text('ignored')
  # Unlabelled folder, no splits: 5 patients with 2 images each, named p<N>_<k>.png.
  for patient in range(5):
    for k in range(2):
      _png(root / 'hospital' / f'ward{k}' / f'p{patient}_{k}.png', noise())
  # CheXpert-style table: paths relative to the image root, 1.0 / 0.0 / -1.0 / blank.
  rows = [  # path, patient, labels, split
      ('train/patient1/study1/view1_frontal.png', 1, ['1.0', '', '0.0'], 'train'),
      ('train/patient1/study2/view1_frontal.png', 1, ['-1.0', '1.0', ''], 'train'),
      ('train/patient2/study1/view1_frontal.jpg', 2, ['', '', ''], 'train'),
      ('train/patient3/study1/view1_frontal.png', 3, ['0.0', '1', '1'], 'train'),
      ('train/patient4/study1/view1_frontal.png', 4, ['0', '0', '1.0'], 'train'),
      ('train/patient5/study1/view1_frontal.png', 5, ['1', '0', '1'], 'train'),
      ('valid/patient6/study1/view1_frontal.png', 6, ['1', '0', '0'], 'valid'),
      ('valid/patient7/study1/view1_frontal.png', 7, ['0', '1', '0'], 'valid'),
      ('test/patient8/study1/view1_frontal.png', 8, ['1', '0', '0'], 'test'),
      ('test/patient9/study1/view1_frontal.png', 9, ['0', '1', '0'], 'test'),
      ('test/patient10/study1/view1_frontal.png', 10, ['0', '0', '1'], 'test'),
      ('test/patient11/study1/view1_frontal.png', 11, ['1', '1', '0'], 'test'),
      ('train/patient12/study1/missing.png', 12, ['1', '0', '0'], 'train'),
  ]
  lines = ['Path,Sex,' + ','.join(LABELS) + ',Patient,Split']
  for path, patient, values, split in rows:
    lines.append(f'{path},Female,{",".join(values)},{patient},{split}')
    if 'missing' not in path:
      _png(root / 'chexpert' / path, noise())
  (root / 'chexpert.csv').write_text('\n'.join(lines) + '\n')
  # MedMNIST layout: PneumoniaMNIST-like (grey, [N, 1] classes) and ChestMNIST-like (RGB, 14).
  counts = {'train': 8, 'val': 4, 'test': 4}
  np.savez_compressed(root / 'pneumoniamnist.npz', **{
      **{f'{s}_images': rng.integers(0, 256, (n, 20, 20), dtype=np.uint8)
         for s, n in counts.items()},
      **{f'{s}_labels': (np.arange(n) % 2)[:, None] for s, n in counts.items()}})
  np.savez_compressed(root / 'chestmnist.npz', **{
      **{f'{s}_images': rng.integers(0, 256, (n, 20, 20, 3), dtype=np.uint8)
         for s, n in counts.items()},
      **{f'{s}_labels': (np.add.outer(np.arange(n), np.arange(14)) % 2).astype(np.uint8)
         for s, n in counts.items()}})
  return expected


@pytest.fixture(scope='module')
def own(tmp_path_factory):
  """Every layout written and prepared once (in this process, one decode worker)."""
  root = tmp_path_factory.mktemp('own')
  expected = _write_files(root, np.random.default_rng(0))
  data_dir = root / 'tfds'
  common = ['--data_dir', data_dir, '--image_size', SIZE, '--num_workers', 1]
  summaries = {
      'folder': _prepared('folder', '--manual_dir', root / 'xrays', '--name', 'xrays', *common),
      'unlabelled': _prepared('folder', '--manual_dir', root / 'hospital', '--name',
                              'hospital', '--unlabelled', '--patient_regex', r'(p\d+)_',
                              *common),
      'csv': _prepared('csv', '--csv', root / 'chexpert.csv', '--image_root',
                       root / 'chexpert', '--name', 'chexpert', '--path_column', 'Path',
                       '--label_columns', ','.join(LABELS), '--patient_column', 'Patient',
                       '--split_column', 'Split', '--uncertain', 'ones', *common),
      'pneumonia': _prepared('medmnist', '--npz', root / 'pneumoniamnist.npz', '--name',
                             'pneumonia', *common),
      'chest': _prepared(f'medmnist/chest/{SIZE}', '--npz',
                         root / 'chestmnist.npz', '--data_dir', data_dir, '--num_workers', 1),
  }
  return types.SimpleNamespace(root=root, data_dir=str(data_dir), expected=expected,
                               summaries=summaries)


def _records(dataset, data_dir, split):
  source = data.data_source(dataset, data_dir, split)
  return {source[i]['image_index'].decode(): source[i] for i in range(len(source))}


def test_pixels_counts_labels_and_patients(own):
  """DICOM / 16-bit conversion, the counts, CSV labels, patients, names and no-op re-runs."""
  data_dir, summaries = own.data_dir, own.summaries
  # Pixels: DICOM rescale + window, MONOCHROME1 inversion and 16 bits, 16-bit PNG, exactly.
  for name, expected in own.expected.items():
    path = next(own.root.glob(f'xrays/*/*/{name}'))
    np.testing.assert_array_equal(images.read_grayscale(path)[0], expected.astype(np.uint8))
    split = path.parent.parent.name
    record = _records('folder/xrays/16', data_dir, split)[path.relative_to(
        own.root / 'xrays').as_posix()]
    np.testing.assert_array_equal(record['image'][..., 0], images.resize_square(
        expected.astype(np.uint8), SIZE))
  # Counts of the folder: the blank, tiny and broken PNG are skipped and named.
  total = summaries['folder']['counts']['total']
  assert summaries['folder']['splits'] == {'train': 11, 'test': 5}
  assert (total['found'], total['written'], total['corrupt'], total['blank'],
          total['too_small'], total['ignored_files']) == (19, 16, 1, 1, 1, 1)
  assert total['per_label'] == {'normal': 8, 'pneumonia': 8}
  assert data.class_names('folder/xrays/16', data_dir) == ['normal', 'pneumonia']
  assert total['patients_in_several_splits'] == 0
  # The unlabelled folder: patient-wise hash split by --patient_regex.
  unlabelled = summaries['unlabelled']['counts']['total']
  assert (unlabelled['written'], unlabelled['unlabelled'], unlabelled['patients']) == (10, 10, 5)
  splits_of = {}
  for split in summaries['unlabelled']['splits']:
    for record in _records('folder/hospital/16', data_dir, split).values():
      assert 'label' not in record and 'labels' not in record
      splits_of.setdefault(int(record['patient_id']), set()).add(split)
  assert len(splits_of) == 5 and all(len(s) == 1 for s in splits_of.values())
  # The CSV: -1 -> 1 (--uncertain ones), blank -> 0, patients from the column.
  csv_counts = summaries['csv']['counts']
  assert summaries['csv']['splits'] == {'train': 6, 'validation': 2, 'test': 4}
  assert (csv_counts['total']['rows'], csv_counts['total']['missing_from_disk'],
          csv_counts['total']['unlabelled']) == (13, 1, 1)
  assert csv_counts['total']['per_label'] == {'Atelectasis': 6, 'Cardiomegaly': 5,
                                              'Effusion': 4, 'No Finding': 1}
  train = _records('csv/chexpert/16', data_dir, 'train')
  assert train['train/patient1/study2/view1_frontal.png']['labels'].tolist() == [1, 1, 0]
  assert train['train/patient1/study1/view1_frontal.png']['label'] == 0  # one positive
  assert train['train/patient2/study1/view1_frontal.jpg']['label'] == 3  # none: No Finding
  assert train['train/patient3/study1/view1_frontal.png']['label'] == -1  # several
  assert int(train['train/patient5/study1/view1_frontal.png']['patient_id']) == 5
  builder = data.get_builder('csv/chexpert/16', data_dir)
  assert builder.info.metadata['label_names'] == LABELS
  assert builder.info.metadata['patients_in_several_splits'] == 0
  assert data.class_names('csv/chexpert/16', data_dir) == LABELS + ['No Finding']
  # MedMNIST: names from the file name, official splits, single- and multi-label.
  assert summaries['pneumonia']['splits'] == {'train': 8, 'validation': 4, 'test': 4}
  assert data.class_names('medmnist/pneumonia/16', data_dir) == ['normal', 'pneumonia']
  chest = data.get_builder('medmnist/chest/16', data_dir).info
  assert chest.metadata['label_names'] == list(labels_lib.FINDINGS)
  assert chest.features['labels'].shape == (14,)
  # Names: listed, and an own name that is not prepared says what is.
  assert data.known_datasets(data_dir)['medmnist'] == ['chest/16', 'pneumonia/16']
  with pytest.raises(FileNotFoundError) as error:
    data.num_examples('folder/xrays/32', data_dir, 'train')
  assert 'prepared there: csv/chexpert/16, folder/hospital/16, folder/xrays/16' in str(
      error.value) and 'run: python -m simclr_jax.prepare folder --manual_dir DIR --name xrays' in str(error.value)
  with pytest.raises(ValueError, match="NAME 'x y'"):
    data.check_dataset_name('folder/x y/16')
  # prepare again: the same options do nothing, others are refused (exit 2, one line).
  status, out, _ = _run_prepare('csv', '--csv', own.root / 'chexpert.csv', '--name',
                                'chexpert', '--uncertain', 'ones', '--image_size', SIZE,
                                '--data_dir', data_dir)
  assert status == 0 and 'already prepared' in out
  status, _, err = _run_prepare(f'csv/chexpert/{SIZE}', '--uncertain', 'zeros',
                                '--data_dir', data_dir)
  assert status == 2 and err.count('\n') == 1
  assert 'was prepared with uncertain ones; asked for uncertain zeros' in err
  # A zero is an option given, not one left out: the hash split of 0 % test is another split.
  status, _, err = _run_prepare(f'folder/hospital/{SIZE}', '--test_fraction', '0',
                                '--data_dir', data_dir)
  assert status == 2 and err.count('\n') == 1 and 'test_fraction' in err, err


def _config(dataset, data_dir, **overrides):
  """test_lifecycle's tiny config on `dataset`, 16 px, 2 steps, checkpoint at step 2."""
  return _tiny_config(data_dir, **{
      'dataset': dataset, 'image_size': SIZE, 'batch_size': 4, 'num_train_steps': 2,
      'checkpoint_every_steps': 2, 'async_checkpointing': False, 'progress_bar': False,
      **overrides})


def test_train_and_evaluate_every_layout(own, tmp_path, capsys):
  """2 SimCLR steps on each layout (both MedMNIST files share one run), then the
  evaluators on the checkpoints; what needs labels refuses the unlabelled folder."""
  from simclr_jax import evaluate
  from simclr_jax.training import loop
  from simclr_jax.evaluation import encoders
  from simclr_jax.evaluation import offline
  from simclr_jax.evaluation import online
  from simclr_jax.training import settings
  data_dir = own.data_dir
  runs = {  # dataset -> config overrides (the train step is compiled once for all)
      'folder/xrays/16': {},
      'folder/hospital/16': {},
      'csv/chexpert/16': {},
      'medmnist/chest/16': {'input.class_balanced': True},
  }
  for dataset, overrides in runs.items():
    loop.train_and_evaluate(_config(dataset, data_dir, **overrides),
                             str(tmp_path / dataset.replace('/', '_')))
    losses = [json.loads(line)['loss'] for line in (
        tmp_path / dataset.replace('/', '_') / 'metrics.jsonl').read_text().splitlines()]
    assert len(losses) == 2 and np.all(np.isfinite(losses)), dataset

  def evaluated(workdir, dataset, k=None, label_mode=None):
    encoder = encoders.load_encoder(workdir=str(tmp_path / workdir))
    output = offline.Output(str(tmp_path / f"eval_{workdir}_{dataset.replace('/', '_')}"),
                            plots=False)
    plan = offline.plan(
        offline.Data(dataset=dataset, data_dir=data_dir, split='test', batch_size=8,
                     label_mode=label_mode),
        {'clustering': {'k': k, 'n_init': 1}, 'linear_probe': {'solver': 'sklearn'},
         'knn': {'k': 3}}, output)
    return offline.evaluate_encoder(encoder, plan, output)

  report = evaluated('folder_xrays_16', 'folder/xrays/16')
  assert report['checkpoint_step'] == 2 and report['num_examples'] == 5 and report['k'] == 2
  assert set(report['linear_auroc']) == {'normal', 'pneumonia'}
  # Pretrained without labels, evaluated on a labelled set of the same size.
  report = evaluated('folder_hospital_16', 'folder/xrays/16')
  assert report['num_examples'] == 5 and np.isfinite(report['nmi'])
  # The CSV's own label names: per-label AUROC, single_finding classes, binary modes.
  report = evaluated('csv_chexpert_16', 'csv/chexpert/16', k=2)
  assert report['label_mode'] == 'single_finding' and report['class_names'] == LABELS
  assert set(report['linear_auroc']) == set(report['knn_auroc']) == set(LABELS)
  assert report['num_examples'] == 3  # the test row with two labels is left out
  report = evaluated('medmnist_chest_16', 'medmnist/pneumonia/16')  # same size, other set
  assert report['class_names'] == ['normal', 'pneumonia'] and report['num_examples'] == 4
  report = evaluated('medmnist_chest_16', 'medmnist/chest/16', label_mode='binary:Effusion')
  assert report['label_mode'] == 'binary:Effusion' and report['k'] == 2
  assert report['class_counts'] == {'no Effusion': 2, 'Effusion': 2}

  # What needs labels refuses the unlabelled set in one line naming it and the setting.
  status = evaluate.main(['evaluate', '--random_init', '--model', 'resnet_tiny',
                          '--dataset', 'folder/hospital/16', '--data_dir', data_dir,
                          '--out', str(tmp_path / 'refused')])
  err = capsys.readouterr().err
  assert status == 2 and err.count('\n') == 1 and "'folder/hospital/16' is unlabelled" in err
  assert not (tmp_path / 'refused').exists()
  for overrides, setting in (({'objective': 'supervised'}, "config.objective='supervised'"),
                             ({'input.class_balanced': True}, 'class_balanced=True'),
                             ({'eval_every_steps': 1}, 'online monitor')):
    with pytest.raises(settings.ConfigError, match=f'{setting}.*is unlabelled') as error:
      config = _config('folder/hospital/16', data_dir, **overrides)
      settings.check_run(config)
      loop._create_monitor(config)  # pylint: disable=protected-access
    assert '\n' not in str(error.value)
  # The online monitor reads the CSV's validation split and labels (made, not run: its
  # forward pass is tested in test_evaluation; a label problem would stop it here).
  monitor = online.OnlineMonitor(_config('csv/chexpert/16', data_dir, eval_every_steps=1,
                                         **{'online_eval.evaluators.knn.k': 2}))
  assert monitor._eval_examples['labels'].shape == (2, 3)  # pylint: disable=protected-access
  # The supervised objective learns the CSV's label columns (no compilation here).
  config = _config('csv/chexpert/16', data_dir, objective='supervised',
                   **{'supervised.class_weights': 'inverse_frequency'})
  config = settings.check_run(config).config   # resolved from the data (a copy)
  assert config.supervised.num_classes == 3
  np.testing.assert_allclose(config.supervised.class_frequencies, [3 / 6, 2 / 6, 3 / 6])
  batch = next(data.create_train_iterator(config, process_index=0, process_count=1,
                                          local_device_count=1))
  assert batch['labels'].shape == (1, 4, 3) and batch['labels'].dtype == np.float32


def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path):
  """Each case of issue 18 point 7 through prepare's CLI (in this process: `run` is the
  CLI without sys.exit): exit 2, one line naming the problem, no dataset folder left."""
  root = tmp_path / 'input'
  rng = np.random.default_rng(1)
  for i in range(3):
    _png(root / 'classes/normal' / f'{i}.png', rng.integers(0, 256, (20, 20), np.uint8))
  (root / 'classes/empty').mkdir()
  (root / 'nothing').mkdir()
  (root / 'nothing/readme.txt').write_text('no images here')
  for i in range(3):  # "images" that are not images
    (root / 'fake' / f'{i}.png').parent.mkdir(parents=True, exist_ok=True)
    (root / 'fake' / f'{i}.png').write_text(f'text {i}')
  twin = rng.integers(0, 256, (20, 20), np.uint8)
  for name in ('a.png', 'b.png', 'c.png'):  # the same image twice (found while writing)
    _png(root / 'twins' / name, twin if name != 'c.png' else twin[::-1])
  _png(root / 'table/x.png', twin)
  table = {
      'missing_column.csv': 'Path,Atelectasis\nx.png,1\n',
      'bad_value.csv': 'Path,Atelectasis,Edema\nx.png,1,maybe\n',
      'twice.csv': 'Path,Atelectasis,Edema\nx.png,1,0\nx.png,0,1\n',
      'uncertain.csv': 'Path,Atelectasis,Edema\nx.png,-1,0\n',
  }
  for name, text in table.items():
    (root / name).write_text(text)
  np.savez(root / 'not_medmnist.npz', images=np.zeros((2, 20, 20), np.uint8))
  np.savez(root / 'float_images.npz', **{f'{s}_{k}': np.zeros((2, 20, 20) if k == 'images'
                                                               else (2, 1))
                                         for s in ('train', 'val', 'test')
                                         for k in ('images', 'labels')})
  csv = lambda name: ['csv', '--csv', root / name, '--image_root', root / 'table',  # pylint: disable=unnecessary-lambda-assignment
                      '--path_column', 'Path', '--label_columns', 'Atelectasis,Edema']
  cases = [
      (csv('missing_column.csv'), "no column(s) ['Edema']; its columns are ['Path', "
                                  "'Atelectasis']"),
      (['folder', '--manual_dir', root / 'nothing'], 'no PNG, JPEG or DICOM files found'),
      (csv('bad_value.csv'), "line 2, column 'Edema': label value 'maybe'; accepted: 1, 0"),
      (csv('twice.csv'), "the same image 'x.png' on lines 2 and 3"),
      (['folder', '--manual_dir', root / 'twins'], "the same image twice: 'a.png' and "
                                                  "'b.png' have the same bytes"),
      (['folder', '--manual_dir', root / 'classes'], f'class folder {root}/classes/empty '
                                                    f'has no PNG, JPEG or DICOM files'),
      (['medmnist', '--npz', root / 'not_medmnist.npz'], 'has no train_images, '
                                                         'train_labels, val_images'),
      (['medmnist', '--npz', root / 'float_images.npz'], 'train_images is float64 '
                                                         '[2, 20, 20], not images'),
      (['folder', '--manual_dir', root / 'fake'], 'could be used (corrupt, blank or too '
                                                 'small: not images?)'),
      (csv('uncertain.csv'), 'has uncertain (-1) label cells; choose what they become'),
      (['folder', '--manual_dir', root / 'classes', '--uncertain', 'ones'],
       'folder does not take --uncertain'),
  ]
  for argv, message in cases:
    data_dir = tmp_path / 'tfds'
    status, _, err = _run_prepare(*argv, '--name', 'bad', '--image_size', SIZE,
                                  '--data_dir', data_dir, '--num_workers', 1)
    assert (status, err.count('\n')) == (2, 1), (argv, err)
    assert err.startswith('error: ') and message in err, (message, err)
    assert not data_dir.exists(), (argv, list(data_dir.rglob('*')))


def test_ctrl_c_during_prepare_exits_130_and_leaves_nothing(tmp_path):
  """SIGINT to the process group (a terminal's Ctrl-C) while split images are written by
  worker processes: one line on stderr, exit 130, no traceback, nothing left."""
  data_dir = tmp_path / 'tfds'
  proc = subprocess.Popen(
      [sys.executable, '-m', 'simclr_jax.prepare', 'synthetic_cxr', '--data_dir', data_dir,
       '--image_size', '16', '--train_size', '10000', '--num_workers', '2'],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
      cwd=REPO_ROOT, start_new_session=True)
  try:
    for line in proc.stdout:  # the first progress line: images are being written
      if line.startswith('[prepare synthetic_cxr/16 train] image'):
        break
    assert any(data_dir.rglob('incomplete.*')), 'TFDS writes into an incomplete.* folder'
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)
      proc.wait()
  assert proc.returncode == 130, stderr
  assert stderr.startswith('Interrupted: prepare stopped') and stderr.count('\n') == 1, stderr
  assert not data_dir.exists(), list(data_dir.rglob('*'))


def test_given_split_folders_are_made_patient_wise_unless_kept(tmp_path):
  """Split folders that put a patient in two splits (issue 19 point 1, "any layout whose
  folders give the split"): by default the patient is moved wholly into one split (NIH's
  rule), counted and recorded; --keep_folder_splits keeps the folders and records the leak;
  preparing again with the other choice is refused (it changes the content)."""
  rng = np.random.default_rng(3)
  root = tmp_path / 'input'
  layout = {  # split folder -> patients (2 images each, p7 leaks from train into test)
      'train': ['p1', 'p2', 'p3', 'p7'], 'val': ['p4'], 'test': ['p5', 'p6', 'p7']}
  for split, patients in layout.items():
    for patient in patients:
      for film in range(2):
        _png(root / split / 'normal' / f'{patient}_{split}_{film}.png',
             rng.integers(0, 256, (20, 20), dtype=np.uint8))
  common = ('folder', '--manual_dir', root, '--image_size', SIZE,
            '--patient_regex', r'^(?:.*/)?p(\d+)_', '--num_workers', 1)
  moved = _prepared(*common, '--name', 'moved', '--data_dir', tmp_path / 'a')
  assert moved['patients_in_several_splits'] == 0
  total = moved['counts']['total']
  assert total['patients_moved'] == 1 and sum(total['images_moved'].values()) == 2
  assert moved['options']['keep_folder_splits'] is False
  assert sum(moved['splits'].values()) == 16
  patients_by_split = {split: {int(r['patient_id']) for r in _records(
      'folder/moved/16', str(tmp_path / 'a'), split).values()} for split in moved['splits']}
  assert sum(7 in ids for ids in patients_by_split.values()) == 1
  kept = _prepared(*common, '--name', 'kept', '--data_dir', tmp_path / 'b',
                   '--keep_folder_splits')
  assert kept['patients_in_several_splits'] == 1
  assert kept['splits'] == {'train': 8, 'validation': 2, 'test': 6}
  assert kept['options']['keep_folder_splits'] is True
  status, _, err = _run_prepare(*common, '--name', 'kept', '--data_dir', tmp_path / 'b',
                                '--no-keep_folder_splits')
  assert status == 2 and 'keep_folder_splits' in err and len(err.strip().splitlines()) == 1
