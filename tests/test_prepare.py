"""The prepare CLI: progress in logs, re-runs with other options, bad input (exit 2, one line)."""
import shutil
import subprocess
import sys

import pytest

from conftest import run_module
from conftest import subprocess_env
from simclr_jax import data
from simclr_jax import prepare

SIZES = ['--train_size', '20', '--validation_size', '10', '--test_size', '10']


def run_prepare(capsys, *argv):
  """prepare's CLI in this process: (exit status, stdout, stderr)."""
  status = prepare.run(['synthetic_cxr', '--image_size', '16', '--num_workers', '1', *argv])
  captured = capsys.readouterr()
  return status, captured.out, captured.err


def test_unknown_dataset_is_one_line_listing_the_known_names(tmp_path, caplog):
  known = ('synthetic_cxr/16|32|64|96|128|224|256, '
           'nih_chest_xray14/64|224|256|512|thumbs64, '
           'folder/NAME/SIZE, csv/NAME/SIZE, medmnist/NAME/SIZE')
  for name in ('imagenet2012', 'synthetic_cxr/17', 'nih_chest_xray14/thumbs32'):
    with pytest.raises(ValueError) as error:
      data.get_builder(name, str(tmp_path))
    assert str(error.value) == (f'unknown dataset {name!r}; known datasets: {known} '
                                f'(none prepared in {tmp_path})')
  with pytest.raises(ValueError, match="unknown dataset 'synthetic_cxr/17'; known datasets"):
    data.num_examples('synthetic_cxr/17', str(tmp_path), 'train')
  # A known name that is not prepared keeps its hint: the command that prepares it.
  with pytest.raises(FileNotFoundError) as error:
    data.num_examples('nih_chest_xray14/thumbs64', str(tmp_path), 'train')
  assert 'run: python -m simclr_jax.prepare nih --manual_dir NIH_THUMBS_DIR --csv' in str(
      error.value) and '\n' not in str(error.value)
  assert not [record for record in caplog.records if 'Variant folder' in record.getMessage()]
  # A bare family name means its documented default config.
  assert data.get_builder('synthetic_cxr', str(tmp_path)).builder_config.name == '64'
  assert data.get_builder('nih_chest_xray14', str(tmp_path)).builder_config.name == '256'


def test_progress_lines_and_rerun_with_other_sizes(tmp_path, capsys):
  data_dir = str(tmp_path / 'tfds')
  status, out, _ = run_prepare(capsys, '--data_dir', data_dir, *SIZES)
  assert status == 0
  lines = out.splitlines()
  # stdout is not a terminal here: one plain line per ~10 % of a split, and a summary.
  assert '[prepare synthetic_cxr/16 train] image 20/20 (100.0%)' in out
  assert any(line.startswith('[prepare synthetic_cxr/16 test] generated 10 images in ')
             for line in lines)
  version_folder = data.get_builder('synthetic_cxr/16', data_dir).data_path
  # The same sizes, or none given: nothing to do (exit 0).
  for argv in (SIZES, ['--train_size', '20'], []):
    status, out, _ = run_prepare(capsys, '--data_dir', data_dir, *argv)
    assert status == 0 and 'already prepared' in out, argv
  # Other sizes: exit 2, one line naming both sizes and the way out; the files are kept.
  status, out, err = run_prepare(capsys, '--data_dir', data_dir, '--train_size', '30',
                                 '--test_size', '10')
  assert status == 2 and 'already prepared' not in out
  assert err == (f'error: synthetic_cxr/16 in --data_dir {data_dir} was prepared with '
                 f'train_size 20; asked for train_size 30. Prepared files are never replaced: '
                 f'prepare into a new --data_dir, or delete {version_folder} and run again\n')
  assert data.get_builder('synthetic_cxr/16', data_dir).info.splits['train'].num_examples == 20


def test_bad_input_is_exit_2_and_one_line(tmp_path, capsys):
  a_file = tmp_path / 'a_file'
  a_file.write_text('not a folder')
  for argv, message in (
      (['--data_dir', str(a_file / 'tfds')],
       f'error: --data_dir {a_file / "tfds"}: cannot write into {a_file / "tfds"} '
       f'(Not a directory); give a --data_dir you can write to\n'),
      (['--data_dir', str(tmp_path), '--image_size', '17'],
       'error: --image_size 17: synthetic_cxr sizes are (16, 32, 64, 96, 128, 224, 256)\n')):
    status, _, err = run_prepare(capsys, *argv)
    assert (status, err) == (2, message)
  with pytest.raises(SystemExit) as exit_info:  # argparse: one line too, not the usage
    prepare.run(['synthetic_cxr', '--data_dir', str(tmp_path), '--image_size', 'x'])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.count('\n') == 1


def test_unknown_dataset_exits_2_with_one_line(tmp_path):
  result = run_module(['simclr_jax.prepare', 'imagenet', '--data_dir', tmp_path], check=False)
  assert result.returncode == 2, result.stderr
  assert result.stderr.startswith("error: unknown dataset 'imagenet'; prepare takes "
                                  "synthetic_cxr, nih, folder, csv or medmnist, or one of "
                                  "the known datasets: synthetic_cxr/16|32|64")
  assert result.stderr.count('\n') == 1 and not list(tmp_path.iterdir())


def _write_blocked(folder, command_prefix) -> bool:
  """True if `command_prefix` + mkdir cannot create a new folder in `folder`."""
  probe = folder / f'probe{len(command_prefix)}'
  blocked = subprocess.run(command_prefix + ['mkdir', str(probe)],
                           capture_output=True).returncode != 0
  if not blocked:
    probe.rmdir()
  return blocked


def test_read_only_data_dir_exits_2_with_one_line(tmp_path):
  read_only = tmp_path / 'read_only'
  read_only.mkdir()
  read_only.chmod(0o555)
  # As root the mode bits do not stop writes; without CAP_DAC_OVERRIDE they do.
  command_prefix = []
  if not _write_blocked(read_only, command_prefix):
    command_prefix = ['setpriv', '--bounding-set=-dac_override,-dac_read_search', '--']
    if shutil.which('setpriv') is None or not _write_blocked(read_only, command_prefix):
      pytest.skip('cannot make a folder unwritable here: root and no setpriv to drop '
                  'CAP_DAC_OVERRIDE (the a-file-not-a-folder case still covers exit 2)')
  data_dir = read_only / 'tfds'
  result = subprocess.run(
      command_prefix + [sys.executable, '-m', 'simclr_jax.prepare', 'synthetic_cxr',
                        '--data_dir', str(data_dir), '--image_size', '16', *SIZES],
      capture_output=True, text=True, env=subprocess_env(), timeout=300)
  assert result.returncode == 2, result.stderr
  assert result.stderr == (f'error: --data_dir {data_dir}: cannot write into {data_dir} '
                           f'(Permission denied); give a --data_dir you can write to\n')
  assert not data_dir.exists()
