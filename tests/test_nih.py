"""nih_chest_xray14 builder and prepare CLI on the real sample files (64 px)."""
import csv
import gzip
import json
import shutil

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from conftest import run_module
from simclr_jax import data
from simclr_jax.data import nih

DATASET = 'nih_chest_xray14/64'
RGBA_IMAGES = ('00000773_001.png', '00001054_002.png', '00004808_003.png', '00005435_000.png')
CSV_NAME = 'Data_Entry_2017_v2020.csv.gz'


def csv_labels(shared_data):
  """{image index: set of findings} straight from the CSV (independent of nih.py)."""
  with gzip.open(shared_data / 'nih_sample' / CSV_NAME, 'rt') as f:
    return {row['Image Index']: (set(row['Finding Labels'].split('|')), int(row['Patient ID']))
            for row in csv.DictReader(f)}


def link_sample(shared_data, manual_dir, names=None, layout='images_001/images'):
  """A manual dir like a user's: some of the archive images plus the CSV."""
  image_dir = manual_dir / layout
  image_dir.mkdir(parents=True)
  for source in sorted((shared_data / 'nih_sample' / 'images').glob('*.png')):
    if names is None or source.name in names:
      (image_dir / source.name).symlink_to(source)
  (manual_dir / CSV_NAME).symlink_to(shared_data / 'nih_sample' / CSV_NAME)
  return manual_dir


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """The sample prepared once through the CLI: (data_dir, manual_dir, CLI stdout)."""
  from conftest import SHARED_DATA  # pylint: disable=g-import-not-at-top
  if not SHARED_DATA.exists():
    pytest.skip(f'shared data not found at {SHARED_DATA}')
  root = tmp_path_factory.mktemp('nih')
  manual_dir = link_sample(SHARED_DATA, root / 'manual')
  data_dir = root / 'tfds'
  result = run_module(['simclr_jax.prepare', 'nih', '--data_dir', data_dir,
                       '--manual_dir', manual_dir, '--image_size', 64,
                       '--validation_fraction', 0.3, '--num_workers', 2])
  return str(data_dir), manual_dir, result.stdout


def records_by_name(data_dir):
  records = {}
  for split in data.get_builder(DATASET, data_dir).info.splits:
    source = data.data_source(DATASET, data_dir, split)
    for index in range(len(source)):
      record = source[index]
      records[record['image_index'].decode()] = dict(record, split=split)
  return records


def test_prepare_counts_found_and_missing(prepared):
  _, _, stdout = prepared
  summary = json.loads(stdout.strip().splitlines()[-1])
  total = summary['counts']['total']
  assert (total['csv_rows'], total['found'], total['missing_from_disk']) == (112120, 41, 112079)
  assert (total['written'], total['corrupt'], total['not_in_csv']) == (41, 0, 0)
  splits = {s: summary['counts'][s] for s in ('train', 'validation', 'test')}
  assert sum(c['found'] for c in splits.values()) == 41
  assert sum(c['missing_from_disk'] for c in splits.values()) == 112079
  assert summary['splits'] == {s: c['written'] for s, c in splits.items() if c['written']}
  assert '112079' in stdout and 'missing_from_disk' in stdout


def test_labels_match_the_csv(prepared, shared_data):
  data_dir, _, _ = prepared
  expected = csv_labels(shared_data)
  records = records_by_name(data_dir)
  assert len(records) == 41
  for name, record in records.items():
    findings, patient_id = expected[name]
    assert record['patient_id'] == patient_id
    assert set(np.array(nih.FINDINGS)[record['labels'].astype(bool)]) == findings - {'No Finding'}
    assert bool(record['no_finding']) == (findings == {'No Finding'})
    if findings == {'No Finding'}:
      assert record['label'] == nih.LABEL_NAMES.index('No Finding')
    elif len(findings) == 1:
      assert nih.LABEL_NAMES[record['label']] in findings
    else:
      assert record['label'] == -1
    assert record['image'].shape == (64, 64, 1) and record['image'].dtype == np.uint8
  assert sum(r['no_finding'] for r in records.values()) == 20
  assert sum(r['labels'][nih.FINDINGS.index('Pneumonia')] for r in records.values()) == 21
  assert data.class_names(DATASET, data_dir)[-1] == 'No Finding'


def test_rgba_images_become_their_gray_values(prepared, shared_data):
  data_dir, _, _ = prepared
  records = records_by_name(data_dir)
  for name in RGBA_IMAGES:
    path = shared_data / 'nih_sample' / 'images' / name
    rgba = np.asarray(Image.open(path)).astype(np.int64)
    assert rgba.shape == (1024, 1024, 4)
    # Luma of R, G, B (ITU-R 601-2), alpha ignored; these files hold gray in R = G = B.
    luma = (rgba[..., 0] * 299 + rgba[..., 1] * 587 + rgba[..., 2] * 114 + 500) // 1000
    with Image.open(path) as image:
      gray = nih.to_grayscale_uint8(image)
    np.testing.assert_array_equal(gray, luma.astype(np.uint8))
    expected = np.asarray(Image.fromarray(luma.astype(np.uint8)).resize(
        (64, 64), Image.Resampling.LANCZOS, reducing_gap=2.0))
    np.testing.assert_array_equal(records[name]['image'][..., 0], expected)
    assert 60 < expected.mean() < 200  # an X-ray, not the alpha plane


def test_16_bit_png_is_scaled_not_clipped(tmp_path, shared_data):
  gray = np.asarray(Image.open(shared_data / 'nih_sample' / 'images' / '00000583_034.png'))
  Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / 'sixteen.png')
  with Image.open(tmp_path / 'sixteen.png') as image:
    assert image.mode.startswith('I')
    np.testing.assert_array_equal(nih.to_grayscale_uint8(image), gray)


def test_splits_are_patient_wise(prepared):
  data_dir, _, _ = prepared
  splits_of_patient = {}
  for record in records_by_name(data_dir).values():
    splits_of_patient.setdefault(int(record['patient_id']), set()).add(record['split'])
  assert len(splits_of_patient) == 35
  assert all(len(splits) == 1 for splits in splits_of_patient.values())
  assert len(set().union(*splits_of_patient.values())) == 3
  assert nih.patient_split(583) == nih.patient_split(583)


def test_prepare_again_is_a_no_op(prepared):
  data_dir, manual_dir, _ = prepared
  result = run_module(['simclr_jax.prepare', 'nih', '--data_dir', data_dir,
                       '--manual_dir', manual_dir, '--image_size', 64])
  assert 'already prepared' in result.stdout
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary['already_prepared'] and summary['counts']['total']['found'] == 41


def test_corrupt_and_unlisted_images_are_counted_and_skipped(tmp_path, shared_data):
  names = ('00000583_034.png', '00000583_045.png', '00001595_002.png')
  manual_dir = link_sample(shared_data, tmp_path / 'manual', names, layout='images')
  corrupt = manual_dir / 'images' / names[2]
  corrupt.unlink()
  corrupt.write_bytes((shared_data / 'nih_sample' / 'images' / names[2]).read_bytes()[:5000])
  shutil.copy(manual_dir / 'images' / names[0], manual_dir / 'images' / '99999999_000.png')
  builder = data.get_builder(DATASET, str(tmp_path / 'tfds'), test_fraction=0.0,
                             validation_fraction=0.0, num_workers=1)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir)))
  counts = builder.prepare_counts
  assert counts['total']['found'] == 3 and counts['total']['not_in_csv'] == 1
  assert counts['train']['corrupt'] == 1 and counts['train']['written'] == 2
  assert data.num_examples(DATASET, str(tmp_path / 'tfds'), 'train') == 2


def test_no_usable_image_is_an_error_naming_the_manual_dir(tmp_path, shared_data):
  manual_dir = tmp_path / 'empty'
  (manual_dir / 'images').mkdir(parents=True)
  (manual_dir / CSV_NAME).symlink_to(shared_data / 'nih_sample' / CSV_NAME)
  with pytest.raises(FileNotFoundError, match=f'no usable images in manual_dir {manual_dir}'):
    nih.plan_splits(manual_dir)


def link_thumbs(shared_data, manual_dir, per_folder=3, patients=()):
  """A thumbs-layout manual dir: the first `per_folder` images of every split/class folder,
  plus every image of `patients` (Patient IDs), each in its own folder."""
  thumbs = shared_data / 'nih_thumbs'
  patient_of = ({name: patient for name, (_, patient) in csv_labels(shared_data).items()}
                if patients else {})
  for split in ('train', 'valid', 'test'):
    for cls in nih.THUMBS_CLASS_FOLDERS:
      (manual_dir / split / cls).mkdir(parents=True)
      for position, path in enumerate(sorted((thumbs / split / cls).glob('*.png'))):
        if position < per_folder or patient_of.get(path.name) in patients:
          (manual_dir / split / cls / path.name).symlink_to(path)
  return manual_dir


def test_thumbs_layout_uses_its_split_folders(tmp_path, shared_data):
  thumbs = shared_data / 'nih_thumbs'
  manual_dir = link_thumbs(shared_data, tmp_path / 'thumbs')
  assert nih.is_thumbs_layout(manual_dir)
  result = run_module(['simclr_jax.prepare', 'nih', '--data_dir', tmp_path / 'tfds',
                       '--manual_dir', manual_dir,
                       '--csv', shared_data / 'nih_sample' / CSV_NAME, '--num_workers', 1])
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary['dataset'] == 'nih_chest_xray14/thumbs64'
  assert summary['splits'] == {'train': 6, 'validation': 6, 'test': 6}
  source = data.data_source('nih_chest_xray14/thumbs64', str(tmp_path / 'tfds'), 'validation')
  names = {source[i]['image_index'].decode(): source[i] for i in range(len(source))}
  path = sorted((thumbs / 'valid' / '1_abnormal').glob('*.png'))[0]
  np.testing.assert_array_equal(  # 64x64 RGB with R = G = B: stored unchanged
      names[path.name]['image'][..., 0], np.asarray(Image.open(path))[..., 0])
  assert not names[path.name]['no_finding']


def test_class_balanced_nih_batches_see_rare_findings_more(prepared):
  data_dir, _, _ = prepared
  config = ml_collections.ConfigDict(dict(
      dataset=DATASET, data_dir=data_dir, train_split='train', batch_size=16, seed=0,
      input=dict(num_workers=0, prefetch_buffer_size=2, class_balanced=True)))
  labels = data.balance_labels(DATASET, data_dir, 'train')  # multi-hot [N, 14]
  assert labels.shape[1] == 14
  iterator = data.create_train_iterator(
      config, process_index=0, process_count=1, local_device_count=1)
  # The batches are the sampler's draws: position i of the stream is record sampler[i].
  sampler = data.WeightedIndexSampler(data.example_weights(labels), seed=0)
  source = data.data_source(DATASET, data_dir, 'train')
  expected = np.stack([source[sampler[i]]['image'] for i in range(16)])
  np.testing.assert_array_equal(next(iterator)['image'][0], expected)
  drawn = labels[[sampler[i] for i in range(16 * 40)]]

  def group_frequencies(multi_hot):  # 14 findings + "No Finding"
    return np.concatenate([multi_hot, multi_hot.sum(1, keepdims=True) == 0], 1).mean(0)

  in_data, in_batches = group_frequencies(labels), group_frequencies(drawn)
  present = in_data > 0
  in_data, in_batches = in_data[present], in_batches[present]
  rarest = in_data == in_data.min()
  assert (in_batches[rarest] > 3 * in_data[rarest]).all()  # rare findings seen more often
  assert in_batches[-1] < in_data[-1] - 0.1  # "No Finding" (the largest group) less often
  coefficient_of_variation = lambda f: f.std() / f.mean()
  assert coefficient_of_variation(in_batches) < coefficient_of_variation(in_data) - 0.15


def test_supervised_nih_batches_carry_the_14_findings(prepared):
  data_dir, _, _ = prepared
  assert data.supervised_target_spec(DATASET, data_dir) == ('labels', 14, True)
  records = [record for record in records_by_name(data_dir).values()
             if record['split'] == 'train']
  multi_hot = np.stack([record['labels'] for record in records])
  np.testing.assert_allclose(data.class_frequencies(DATASET, data_dir, 'train'),
                             multi_hot.mean(0))
  labels_of_image = {record['image'].tobytes(): record['labels'] for record in records}
  config = ml_collections.ConfigDict(dict(
      dataset=DATASET, data_dir=data_dir, train_split='train', batch_size=8, seed=0,
      objective='supervised', input=dict(num_workers=0, prefetch_buffer_size=2)))
  iterator = data.create_train_iterator(
      config, process_index=0, process_count=1, local_device_count=2)
  for _ in range(4):  # 32 of the 28 training images: crosses an epoch
    batch = next(iterator)
    assert batch['labels'].shape == (2, 4, 14) and batch['labels'].dtype == np.float32
    expected = [labels_of_image[image.tobytes()] for image in batch['image'].reshape(-1, 64, 64, 1)]
    np.testing.assert_array_equal(batch['labels'].reshape(-1, 14), expected)
  assert set(batch) == {'image', 'labels'}


def test_prepare_again_with_other_options_is_refused(prepared, shared_data, tmp_path, capsys):
  data_dir, manual_dir, _ = prepared
  from simclr_jax import prepare  # pylint: disable=g-import-not-at-top
  base = ['nih', '--data_dir', data_dir, '--manual_dir', str(manual_dir), '--image_size', '64']
  version_folder = data.get_builder(DATASET, data_dir).data_path
  # Prepared with --validation_fraction 0.3 and the sample's CSV: the same is a no-op.
  same_csv = tmp_path / 'copy_of_the_labels.csv.gz'
  shutil.copy(shared_data / 'nih_sample' / CSV_NAME, same_csv)
  assert prepare.run(base + ['--validation_fraction', '0.3', '--csv', str(same_csv)]) == 0
  assert 'already prepared' in capsys.readouterr().out
  other_csv = tmp_path / 'Data_Entry_2017.csv'
  other_csv.write_text(','.join(nih.CSV_COLUMNS) + '\n')
  for flags, was, asked in (
      (['--validation_fraction', '0.1'], 'validation_fraction 0.3', 'validation_fraction 0.1'),
      (['--test_fraction', '0.25'], 'test_fraction 0.2', 'test_fraction 0.25'),
      (['--csv', str(other_csv)], f'csv {manual_dir / CSV_NAME} (sha256 ',
       'another --csv (sha256 ')):
    assert prepare.run(base + flags) == 2, flags
    err = capsys.readouterr().err
    assert err.startswith(f'error: {DATASET} in --data_dir {data_dir} was prepared with {was}')
    assert f'; asked for {asked}' in err and err.count('\n') == 1
    assert err.endswith(f'prepare into a new --data_dir, or delete {version_folder} and run '
                        f'again\n')


def test_reassign_patient_wise_rule():
  # Folders: train 6, validation 3, test 3. Patients 1, 2, 5 stay; 3, 4, 6 are leaked.
  folders = {'a': ('train', 1), 'b': ('train', 1), 'c': ('train', 1), 'd': ('validation', 2),
             'e': ('train', 3), 'f': ('train', 3), 'g': ('test', 3),
             'h': ('validation', 4), 'i': ('test', 4), 'j': ('test', 5),
             'k': ('train', 6), 'l': ('validation', 6)}
  image_split = {name: split for name, (split, _) in folders.items()}
  patient_of = {name: patient for name, (_, patient) in folders.items()}
  assert nih.patients_in_several_splits(image_split, patient_of) == 3
  result, moved, images_moved = nih.reassign_patient_wise(image_split, patient_of)
  # Patient 3 (most images) first: test is 2/3 below its size, train 1/2 -> test, although
  # train holds most of its images. Then patient 4 -> validation (test is now over), 6 -> train.
  assert {patient_of[name]: split for name, split in result.items()} == {
      1: 'train', 2: 'validation', 3: 'test', 4: 'validation', 5: 'test', 6: 'train'}
  assert moved == 3 and nih.patients_in_several_splits(result, patient_of) == 0
  assert images_moved == {'train->test': 2, 'validation->train': 1, 'test->validation': 1}
  assert list(images_moved) == ['train->test', 'validation->train', 'test->validation']
  # The order of the input does not matter.
  reordered = dict(reversed(list(image_split.items())))
  assert nih.reassign_patient_wise(reordered, patient_of) == (result, moved, images_moved)


def test_thumbs_patients_in_several_folders_are_reassigned_or_kept(tmp_path, shared_data,
                                                                    capsys):
  from simclr_jax import prepare  # pylint: disable=g-import-not-at-top
  # Patient 205 has one image in valid/ and one in test/, 153 one in train/ and one in valid/.
  manual_dir = link_thumbs(shared_data, tmp_path / 'thumbs', per_folder=1, patients=(205, 153))
  base = ['nih', '--manual_dir', str(manual_dir), '--csv',
          str(shared_data / 'nih_sample' / CSV_NAME), '--num_workers', '1']
  dataset = 'nih_chest_xray14/thumbs64'
  summaries = {}
  for name, flags in (('moved', []), ('kept', ['--keep_folder_splits'])):
    data_dir = str(tmp_path / name)
    assert prepare.run(base + ['--data_dir', data_dir] + flags) == 0
    out = capsys.readouterr().out
    summaries[name] = json.loads(out.strip().splitlines()[-1])
    metadata = data.get_builder(dataset, data_dir).info.metadata
    assert metadata['patients_in_several_splits'] == summaries[name][
        'patients_in_several_splits']
  moved, kept = summaries['moved'], summaries['kept']
  assert kept['patients_in_several_splits'] == 2 and kept['options']['keep_folder_splits']
  assert kept['splits'] == {'train': 3, 'validation': 4, 'test': 3}  # the folders
  assert moved['patients_in_several_splits'] == 0
  assert not moved['options']['keep_folder_splits']
  total = moved['counts']['total']
  assert (total['patients_in_several_split_folders'], total['patients_moved']) == (2, 2)
  assert sum(total['images_moved'].values()) == 2
  assert sum(moved['splits'].values()) == 10
  records = [(int(source[i]['patient_id']), split) for split in moved['splits']
             for source in [data.data_source(dataset, str(tmp_path / 'moved'), split)]
             for i in range(len(source))]
  for patient in (205, 153):
    assert len({split for p, split in records if p == patient}) == 1
  # The option decides the content: asking for the other value is refused.
  assert prepare.run(base + ['--data_dir', str(tmp_path / 'moved'),
                             '--keep_folder_splits']) == 2
  assert 'was prepared with keep_folder_splits False; asked for keep_folder_splits True' in (
      capsys.readouterr().err)
  assert prepare.run(base + ['--data_dir', str(tmp_path / 'kept')]) == 0  # left out: as is
