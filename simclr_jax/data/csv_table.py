"""`csv/NAME/SIZE`: images listed in a CSV label table, CheXpert / MIMIC-CXR style.

  python -m simclr_jax.prepare csv --csv FILE --image_root DIR --name NAME \\
      --path_column Path --label_columns Atelectasis,Cardiomegaly,... [--patient_column P]
      [--split_column S] [--uncertain ignore|zeros|ones] [--blank negative|uncertain]
      [--patient_regex REGEX] [--image_size N]

One row per image (plain or .gz CSV, UTF-8): the image's path relative to --image_root,
one column per label. The label names are the columns, in the order given
(info.metadata['label_names']); the data is multi-label (see own_data.py for the record).
Label cells follow CheXpert's convention, as mlmed/torchxrayvision reads it:
  1 positive, 0 negative (1.0, 0.0, -1.0 as CheXpert writes them are the same values);
  -1 uncertain: mapped by --uncertain: `zeros` (U-Zeros) or `ones` (U-Ones); `ignore`
     leaves out every image with an uncertain cell among the label columns (counted as
     `uncertain_skipped`), since a multi-hot record cannot leave one label open. A table
     with -1 cells and no --uncertain is refused: the choice changes the labels, so it
     is the user's;
  blank = not mentioned = negative, unless --blank uncertain (then -1's rule applies).
  Anything else is refused, naming the line, column and value.
MIMIC-CXR-JPG: join mimic-cxr-2.0.0-chexpert.csv with the metadata table into one row per
image with its path first (subject_id as --patient_column).

Patients: --patient_column (e.g. MIMIC's subject_id), or --patient_regex on the path
(CheXpert: 'patient(\\d+)'), else one patient per row. Splits: --split_column (values
train, val|valid|validation, test) or the patient-wise hash split (own_data.py).
A path listed twice is refused; a listed file missing from disk is counted
(`missing_from_disk`, the first ones logged) like NIH's rows whose image is not there.
"""
import csv
import functools
import gzip
import logging
import pathlib

import numpy as np

from simclr_jax.data import own_data
from simclr_jax.data.tfds_features import file_sha256

UNCERTAIN = ('ignore', 'zeros', 'ones')
BLANK = ('negative', 'uncertain')


def parse_label_value(text: str, where: str):
  """'1' / '0' / '-1' (or 1.0, 0.0, -1.0) -> 1, 0, -1; '' -> None.

  Raises:
    own_data.BadInput: any other value, naming `where`.
  """
  text = (text or '').strip()
  if not text:
    return None
  try:
    value = float(text)
  except ValueError:
    value = None
  if value not in (1.0, 0.0, -1.0):
    raise own_data.BadInput(f'{where}: label value {text!r}; accepted: 1, 0, -1 (uncertain) '
                            f'or blank (not mentioned)')
  return int(value)


def _open(path: pathlib.Path):
  opener = gzip.open if path.suffix == '.gz' else open
  return opener(path, 'rt', newline='', encoding='utf-8-sig')


def plan(csv_path, *, image_root, name: str, path_column: str, label_columns,
         patient_column=None, split_column=None, uncertain=None, blank=None,
         patient_regex=None, test_fraction=None, validation_fraction=None,
         split_seed=None, keep_folder_splits: bool = False) -> own_data.Plan:
  """Reads the table, checks every cell and assigns labels, patients and splits.

  Raises:
    FileNotFoundError: the CSV or the image root does not exist.
    own_data.BadInput: a missing column, a bad label value, a path listed twice, -1
      cells without --uncertain, no listed image on disk (one line naming the file).
  """
  own_data.check_name(name)
  csv_path = pathlib.Path(csv_path).expanduser()
  image_root = pathlib.Path(image_root).expanduser() if image_root else None
  if not csv_path.is_file():
    raise FileNotFoundError(f'--csv {csv_path} does not exist')
  if image_root is None or not image_root.is_dir():
    raise FileNotFoundError(f'--image_root {image_root} is not a folder (the paths in the '
                            f'CSV are relative to it)')
  label_columns = [column.strip() for column in (label_columns or []) if column.strip()]
  if not path_column or not label_columns:
    raise own_data.BadInput('csv needs --path_column and --label_columns (comma-separated)')
  if len(set(label_columns)) < len(label_columns):
    raise own_data.BadInput(f'--label_columns lists a column twice: {label_columns}')
  if uncertain is not None and uncertain not in UNCERTAIN:
    raise own_data.BadInput(f'--uncertain {uncertain!r}; accepted: {", ".join(UNCERTAIN)}')
  blank = blank or 'negative'
  if blank not in BLANK:
    raise own_data.BadInput(f'--blank {blank!r}; accepted: {", ".join(BLANK)}')
  pattern = own_data.compile_patient_regex(patient_regex)
  options = {'csv': str(csv_path.absolute()), 'csv_sha256': file_sha256(csv_path),
             'image_root': str(image_root.absolute()), 'path_column': path_column,
             'label_columns': label_columns, 'patient_column': patient_column or None,
             'split_column': split_column or None, 'uncertain': uncertain,
             'blank': blank, 'patient_regex': patient_regex or None}
  if not split_column:
    options.update(own_data.split_options(test_fraction, validation_fraction, split_seed))

  with _open(csv_path) as file:
    reader = csv.DictReader(file)
    columns = list(reader.fieldnames or [])
    wanted = [path_column, *label_columns, *(c for c in (patient_column, split_column) if c)]
    missing = [column for column in wanted if column not in columns]
    if missing:
      raise own_data.BadInput(f'{csv_path}: no column(s) {missing}; its columns are '
                              f'{columns}')
    rows = []
    seen = {}
    for line, row in enumerate(reader, start=2):
      path = (row[path_column] or '').strip()
      if not path:
        raise own_data.BadInput(f'{csv_path}, line {line}: empty {path_column!r}')
      if path in seen:
        raise own_data.BadInput(f'{csv_path}: the same image {path!r} on lines {seen[path]} '
                                f'and {line}; list each image once')
      seen[path] = line
      values = [parse_label_value(row[column],
                                  f'{csv_path}, line {line}, column {column!r}')
                for column in label_columns]
      rows.append((line, path, values, row))
  if not rows:
    raise own_data.BadInput(f'{csv_path} has no rows')
  has_uncertain = any(value == -1 or (value is None and blank == 'uncertain')
                      for _, _, values, _ in rows for value in values)
  if has_uncertain and uncertain is None:
    raise own_data.BadInput(
        f'{csv_path} has uncertain (-1) label cells; choose what they become with '
        f'--uncertain zeros (negative), ones (positive) or ignore (leave those images out)')

  split_counts = {}
  examples, missing_files, skipped = [], [], 0
  assign = functools.partial(own_data.hash_split, options=options)
  for line, path, values, row in rows:
    if patient_column:
      text = (row[patient_column] or '').strip()
      if not text:
        raise own_data.BadInput(f'{csv_path}, line {line}: empty {patient_column!r}')
      patient_id = own_data.patient_id_from_text(text)
    elif pattern is not None:
      patient_id = own_data.regex_patient_id(pattern, path, f'{csv_path} path')
    else:
      patient_id = own_data.file_patient_id(path)
    if split_column:
      split = own_data.split_of_folder(row[split_column] or '')
      if split is None:
        raise own_data.BadInput(
            f'{csv_path}, line {line}, column {split_column!r}: split {row[split_column]!r}; '
            f'accepted: train, val (valid, validation), test')
    else:
      split = assign(patient_id)
    counts = split_counts.setdefault(split, {'rows': 0, 'missing_from_disk': 0,
                                             'uncertain_skipped': 0})
    counts['rows'] += 1
    resolved = [-1 if value is None and blank == 'uncertain' else value for value in values]
    if uncertain == 'ignore' and -1 in resolved:
      counts['uncertain_skipped'] += 1
      skipped += 1
      continue
    target = np.asarray([0 if value in (None, 0) else 1 if value == 1 else
                         int(uncertain == 'ones') for value in resolved], np.uint8)
    file = image_root / path
    if not file.is_file():
      counts['missing_from_disk'] += 1
      missing_files.append(path)
      continue
    examples.append((split, own_data.Example(
        key=path, source=file, patient_id=patient_id, target=target,
        labels_blank=all(value is None for value in values))))
  if missing_files:
    logging.warning('csv/%s: %d listed image(s) not under --image_root %s, skipped: %s',
                    name, len(missing_files), image_root, missing_files[:10])
  if not examples:
    raise own_data.BadInput(
        f'none of the {len(rows)} images listed in {csv_path} can be used: '
        f'{len(missing_files)} not under --image_root {image_root} (e.g. '
        f'{image_root / rows[0][1]}), {skipped} left out by --uncertain ignore')
  total = {key: sum(counts[key] for counts in split_counts.values())
           for key in ('rows', 'missing_from_disk', 'uncertain_skipped')}
  options['patients'] = ('patient_column' if patient_column else
                         'patient_regex' if pattern is not None else 'one per file')
  options['splits'] = 'split_column' if split_column else 'patient hash'
  return own_data.make_plan(
      family='csv', name=name, labelling='multi-label', names=label_columns,
      examples=examples, options=options, source=f'CSV {csv_path} with images in {image_root}',
      extra_counts={'total': total, **split_counts},
      keep_given_splits=bool(keep_folder_splits) if split_column else None)
