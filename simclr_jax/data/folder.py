"""`folder/NAME/SIZE`: a folder of PNG, JPEG and DICOM files (found recursively).

  python -m simclr_jax.prepare folder --manual_dir DIR --name NAME [--image_size N]
      [--unlabelled] [--patient_regex REGEX] [--test_fraction F] [--validation_fraction F]
      [--split_seed N]

Layouts of --manual_dir (what is shared with the CSV and MedMNIST builders, the record,
counts, patients and the hash split, is in own_data.py):

  DIR/CLASS/**/*.png          class subfolders: single-label, class names = the folder
                              names, sorted (Kermany's NORMAL/ PNEUMONIA/, ...)
  DIR/**/*.dcm                no subfolders, or --unlabelled: an unlabelled dataset
                              (pretraining; evaluators and the supervised objective
                              refuse it)
  DIR/{train,val,test}/...    split folders (also valid/, validation/; any case) holding
                              either of the above: the splits are kept as given

Without split folders the split is the patient-wise hash split (own_data.py). Files are
PNG/JPEG (*.png, *.jpg, *.jpeg) and DICOM (*.dcm, *.dicom, or no extension with the DICM
marker), any case; other files and hidden ones are ignored (counted as
`ignored_files`). Images directly in a folder that also has class subfolders, a folder
next to the split folders that is not one, two split folders for one split or an empty
class folder are refused (one line, exit 2).
"""
import functools
import logging
import pathlib

from simclr_jax.data import images
from simclr_jax.data import own_data


def _visible_entries(folder: pathlib.Path) -> tuple:
  """(sub-folders, image files) directly in `folder`, sorted; hidden entries skipped."""
  folders, files = [], []
  for entry in sorted(folder.iterdir()):
    if entry.name.startswith('.'):
      continue
    if entry.is_dir():
      folders.append(entry)
    elif entry.name.lower().endswith(images.PIL_EXTENSIONS + images.DICOM_EXTENSIONS) or (
        '.' not in entry.name and images.is_dicom(entry)):
      files.append(entry)
  return folders, files


def _split_folders(root: pathlib.Path) -> dict:
  """{split: folder} when root holds split folders, else {None: root}."""
  folders, files = _visible_entries(root)
  splits = {folder: own_data.split_of_folder(folder.name) for folder in folders}
  if not any(splits.values()):
    return {None: root}
  others = [folder.name for folder, split in splits.items() if split is None]
  if others or files:
    extra = [*others, *(path.name for path in files)]
    raise own_data.BadInput(
        f'--manual_dir {root}: {", ".join(extra[:5])} next to the split folders '
        f'{", ".join(f.name for f, s in splits.items() if s)}; put everything in train/, '
        f'val/ (or valid/, validation/) or test/, or use no split folders')
  by_split = {}
  for folder, split in splits.items():
    if split in by_split:
      raise own_data.BadInput(f'--manual_dir {root}: {by_split[split].name}/ and '
                              f'{folder.name}/ are both the {split} split; keep one')
    by_split[split] = folder
  return by_split


def _images_of_part(part: pathlib.Path, unlabelled: bool) -> tuple:
  """(class name or None, file) of every image of one split folder (or of the root), and
  the number of other files ignored."""
  if unlabelled:
    paths, ignored = images.find_image_files(part)
    return [(None, path) for path in paths], ignored
  folders, files = _visible_entries(part)
  if not folders:
    paths, ignored = images.find_image_files(part)
    return [(None, path) for path in paths], ignored
  if files:
    raise own_data.BadInput(
        f'{part}: images ({files[0].name}, ...) next to class folders '
        f'({", ".join(f.name for f in folders[:5])}); move them into a class folder, or pass '
        f'--unlabelled to use every image without labels')
  found, ignored = [], 0
  for folder in folders:
    paths, skipped = images.find_image_files(folder)
    ignored += skipped
    if not paths:
      raise own_data.BadInput(f'class folder {folder} has no PNG, JPEG or DICOM files; '
                              f'remove it or add its images')
    found += [(folder.name, path) for path in paths]
  return found, ignored


def _dicom_patient_ids(paths) -> list:
  """PatientID of each DICOM file (None where absent or unreadable)."""
  import pydicom  # pylint: disable=g-import-not-at-top

  def patient_ids(chunk):
    result = []
    for path in chunk:
      try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=['PatientID'])
        result.append(str(header.get('PatientID', '') or '').strip() or None)
      except Exception:  # pylint: disable=broad-except  # decoded (and counted) later
        result.append(None)
    return result
  chunks = [paths[start:start + 256] for start in range(0, len(paths), 256)]
  return [pid for chunk in map(patient_ids, chunks) for pid in chunk]


def plan(manual_dir, *, name: str, unlabelled: bool = False, patient_regex=None,
         test_fraction=None, validation_fraction=None, split_seed=None,
         keep_folder_splits: bool = False) -> own_data.Plan:
  """Finds the images of a folder and assigns labels, patients and splits.

  Raises:
    FileNotFoundError: --manual_dir is not a folder.
    own_data.BadInput: no images, an empty class folder, a layout that is not one of the
      module docstring's (one line naming the folder).
  """
  own_data.check_name(name)
  root = pathlib.Path(manual_dir).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(f'--manual_dir {root} is not a folder')
  pattern = own_data.compile_patient_regex(patient_regex)
  options = {'manual_dir': str(root.absolute()), 'unlabelled': bool(unlabelled),
             'patient_regex': patient_regex or None}
  parts = _split_folders(root)
  found, ignored = {}, 0
  for split, part in parts.items():
    found[split], skipped = _images_of_part(part, unlabelled)
    ignored += skipped
  labelled = {split: any(cls is not None for cls, _ in items)
              for split, items in found.items() if items}  # an empty split folder: no say
  if len(set(labelled.values())) > 1:
    raise own_data.BadInput(
        f'--manual_dir {root}: split folders '
        f'{", ".join(parts[s].name for s in labelled if labelled[s])} have class folders but '
        f'{", ".join(parts[s].name for s in labelled if not labelled[s])} not; give every '
        f'split the same class folders (or pass --unlabelled)')
  total = sum(len(items) for items in found.values())
  if total == 0:
    raise own_data.BadInput(
        f'no PNG, JPEG or DICOM files found below --manual_dir {root} ({ignored} other '
        f'file(s) ignored)')
  is_labelled = any(labelled.values())
  class_names = sorted({cls for items in found.values() for cls, _ in items if cls})
  if ignored:
    logging.info('folder/%s: %d file(s) that are not PNG, JPEG or DICOM ignored', name,
                 ignored)

  items = [(split, cls, path, path.relative_to(root).as_posix())
           for split, entries in found.items() for cls, path in entries]
  real_paths = {}
  for _, _, path, key in items:
    first = real_paths.setdefault(path.resolve(), key)
    if first != key:
      raise own_data.BadInput(f'the same image twice: {first!r} and {key!r} are one file '
                              f'(a link); remove one of them')
  if pattern is not None:
    patient_ids = [own_data.regex_patient_id(pattern, key, 'file') for *_, key in items]
    options['patients'] = 'patient_regex'
  else:
    dicoms = [index for index, (_, _, path, _) in enumerate(items) if images.is_dicom(path)]
    header_ids = dict(zip(dicoms, _dicom_patient_ids([items[i][2] for i in dicoms])))
    patient_ids = [own_data.patient_id_from_text(header_ids[index]) if header_ids.get(index)
                   else own_data.file_patient_id(key)
                   for index, (*_, key) in enumerate(items)]
    options['patients'] = 'dicom PatientID' if any(header_ids.values()) else 'one per file'
  given_splits = None not in parts
  if given_splits:
    options['splits'] = 'folders'
  else:
    options.update(own_data.split_options(test_fraction, validation_fraction, split_seed))
    options['splits'] = 'patient hash'
  assign = functools.partial(own_data.hash_split, options=options)
  examples = [
      (split if given_splits else assign(patient_id),
       own_data.Example(key=key, source=path, patient_id=patient_id,
                        target=class_names.index(cls) if is_labelled else None))
      for (split, cls, path, key), patient_id in zip(items, patient_ids)]
  return own_data.make_plan(
      family='folder', name=name,
      labelling='single-label' if is_labelled else 'unlabelled', names=class_names,
      examples=examples, options=options, source=f'image folder {root}',
      extra_counts={'total': {'ignored_files': ignored}},
      keep_given_splits=bool(keep_folder_splits) if given_splits else None)
