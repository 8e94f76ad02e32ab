"""ChestX-ray14 labels in one place: the findings, the Data_Entry CSV, and label modes.

The dataset builder (`nih.py`) writes, per image, the multi-hot `labels` [14] in FINDINGS
order, `no_finding` and the single-label `label` (`label_features`). Evaluation turns
those into one class per image with a *label mode* (`select_labels`), because clustering
accuracy, NMI and kNN need exactly one class per example:

  single_finding  images with exactly one of the 14 findings; class = that finding.
                  No Finding and multi-finding images are left out. 14 classes, so
                  k-means runs with k = 14 as in the seed's protocol. Default for NIH.
  single          images with exactly one of the 15 labels (the 14 findings or No
                  Finding); class = that label, No Finding = class 14. 15 classes.
  primary         every image; class = the first label listed in the CSV's
                  "Finding Labels" (No Finding when none). The TFDS features keep only the
                  multi-hot vector, which loses the CSV order; the official CSV lists the
                  findings alphabetically in all but 31 of 112,120 rows, so without the
                  CSV text the alphabetically first present finding is used. With the
                  CSV (`attach_csv_finding_text`) its first listed label is used exactly.
  binary:<Finding> every image; class 1 when <Finding> is present, else 0;
                   binary:No Finding is normal (1) vs any finding (0).
  label           the dataset's own 'label' feature (-1 = undefined, dropped).

Every multi-label dataset works the same way with ITS label names (`multi_label_names`):
an own CSV table's columns, ChestMNIST's findings, ... The names come with the dataset's
`label` ClassLabel, which holds the C label names followed by the "none of them" class
(NIH: the 14 FINDINGS + No Finding; own data: info.metadata['label_names'] + its no-finding
name), so `class_names` gives both; without names (e.g. the online monitor) a 14-column
multi-hot is NIH's and other widths are named 'label 0', 'label 1', ...
For the modes above, read "the C labels" for "the 14 findings" and the dataset's no-finding
class for No Finding; `primary` takes the alphabetically first present label.

For single-label datasets (synthetic_cxr, class folders) the class is the 'label' feature
whatever the mode, except `binary:<class name>`.
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import pathlib
import re
from typing import Optional, Sequence

import numpy as np

# Fixed order of the 14 findings in `labels` (as in the ChestX-ray14 paper / CheXNet).
FINDINGS = ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
            "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
            "Pleural_Thickening", "Hernia")
NO_FINDING = "No Finding"
LABEL_NAMES = FINDINGS + (NO_FINDING,)  # classes of the single-label `label` feature
CSV_COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "Patient Age",
               "Patient Gender", "View Position")

LABEL_MODES = ("single_finding", "single", "primary", "binary:<Finding>", "label")
# What each mode keeps and what its classes are: written into every report.
LABEL_SET_DESCRIPTIONS = {
    "single_finding": "the 14 ChestX-ray14 findings; images with exactly one finding (No "
                      "Finding and multi-finding images left out)",
    "single": "the 14 findings + No Finding; images with exactly one of these 15 labels",
    "primary": "the 14 findings + No Finding; every image, class = its first listed label",
    "binary": "every image; 1 = {target} present, 0 = absent",
    "label": "the dataset's own 'label' classes",
}


@dataclasses.dataclass(frozen=True)
class CsvRow:
  """One row of Data_Entry_2017*.csv."""
  image_index: str
  findings: tuple  # finding names in CSV order, () for No Finding
  patient_id: int
  age: int
  sex: str
  view_position: str


def parse_finding_labels(text: str) -> tuple:
  """'Cardiomegaly|Effusion' -> ('Cardiomegaly', 'Effusion'); 'No Finding' -> ()."""
  names = tuple(name.strip() for name in text.split("|") if name.strip())
  if names == (NO_FINDING,):
    return ()
  unknown = [name for name in names if name not in FINDINGS]
  if unknown:
    raise ValueError(f"unknown finding(s) {unknown} in Finding Labels {text!r}; "
                     f"known: {list(FINDINGS) + [NO_FINDING]}")
  return names


def multi_label_features(positives) -> dict:
  """Multi-hot `labels` [C] uint8 and the single-label `label` of one image.

  `label` is the index of the one positive label, C (the "none of them" class) when there
  is none and -1 when there are several (the classes of label mode 'single').
  """
  labels = np.asarray(positives, np.uint8)
  present = np.flatnonzero(labels)
  label = len(labels) if present.size == 0 else int(present[0]) if present.size == 1 else -1
  return {"labels": labels, "label": label}


def label_features(findings: tuple) -> dict:
  """Multi-hot `labels` [14] uint8, `no_finding` and the single-label `label` of a row.

  `label` is the finding's index for exactly one finding, 14 for No Finding and -1 for
  several findings (the classes of label mode 'single').
  """
  features = multi_label_features([name in findings for name in FINDINGS])
  unknown = [name for name in findings if name not in FINDINGS]
  if unknown:
    raise ValueError(f"unknown finding(s) {unknown}; known: {list(FINDINGS)}")
  return {**features, "no_finding": not findings}


def read_data_entry_csv(path) -> dict:
  """Reads the label table (plain or gzip) into {image_index: CsvRow}.

  Raises:
    ValueError: naming the file (and row) when a column or value is not as expected.
  """
  path = pathlib.Path(path)
  opener = gzip.open if path.suffix == ".gz" else open
  rows = {}
  with opener(path, "rt", newline="") as file:
    reader = csv.DictReader(file)
    missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
      raise ValueError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}")
    for line, record in enumerate(reader, start=2):
      try:
        age = re.match(r"\d+", record["Patient Age"].strip())  # '58' or old-style '058Y'
        rows[record["Image Index"].strip()] = CsvRow(
            image_index=record["Image Index"].strip(),
            findings=parse_finding_labels(record["Finding Labels"]),
            patient_id=int(record["Patient ID"]),
            age=int(age.group()) if age else -1,
            sex=record["Patient Gender"].strip(),
            view_position=record["View Position"].strip())
      except (ValueError, TypeError) as error:
        raise ValueError(f"{path}, line {line}: {error}") from error
  return rows


def data_entry_table(path) -> dict:
  """The label table as per-image arrays, in CSV order.

  Returns:
    {'image_index': [n] str, 'finding_labels': [n] str ('A|B' in CSV order, 'No Finding'),
     'patient_id': [n] int64, 'labels': [n, 14] uint8 multi-hot in FINDINGS order,
     'no_finding': [n] bool}.
  """
  rows = list(read_data_entry_csv(path).values())
  labels = np.stack([label_features(row.findings)["labels"] for row in rows]) if rows else (
      np.zeros((0, len(FINDINGS)), np.uint8))
  return {"image_index": np.asarray([row.image_index for row in rows]),
          "finding_labels": np.asarray(["|".join(row.findings) or NO_FINDING for row in rows]),
          "patient_id": np.asarray([row.patient_id for row in rows], np.int64),
          "labels": labels, "no_finding": labels.sum(axis=1) == 0}


# --------------------------------------------------------------------------------------
# Label modes.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LabelSet:
  """One class id per example under a label mode (-1 = example not used)."""
  mode: str
  labels: np.ndarray       # [n] int64, -1 where the mode drops the example
  class_names: tuple       # names of class ids 0..C-1
  description: str = ""    # which examples are kept and what the classes are
  label_names: tuple = ()  # multi-label data: names of the multi-hot columns

  @property
  def kept(self) -> np.ndarray:
    return self.labels >= 0

  @property
  def num_kept(self) -> int:
    return int(np.sum(self.kept))


def is_multi_label(examples: dict) -> bool:
  """True for ChestX-ray14-like examples: a multi-hot 'labels' [n, C]."""
  return "labels" in examples and np.ndim(examples["labels"]) == 2


def default_label_mode(examples: dict) -> str:
  """'single_finding' (the C labels, k = C; NIH: 14) for multi-label data, else 'label'."""
  return "single_finding" if is_multi_label(examples) else "label"


def multi_label_names(num_labels: int, class_names: Optional[Sequence[str]] = None
                      ) -> tuple:
  """(names of the C multi-hot columns, name of the "none of them" class).

  Args:
    num_labels: C, the width of the multi-hot 'labels'.
    class_names: the dataset's 'label' ClassLabel names: the C label names and then the
      no-finding class (NIH: FINDINGS + No Finding), when known.
  """
  if class_names is not None and len(class_names) == num_labels + 1:
    return tuple(map(str, class_names[:num_labels])), str(class_names[num_labels])
  if num_labels == len(FINDINGS):
    return FINDINGS, NO_FINDING
  return tuple(f"label {j}" for j in range(num_labels)), NO_FINDING


def single_labels(multi_hot: np.ndarray) -> np.ndarray:
  """Class id of images with exactly one of the C + 1 labels (C = none of them), else -1."""
  multi_hot = np.asarray(multi_hot).astype(bool)
  counts = multi_hot.sum(axis=1)
  labels = np.full(multi_hot.shape[0], -1, np.int64)
  labels[counts == 0] = multi_hot.shape[1]
  labels[counts == 1] = np.argmax(multi_hot[counts == 1], axis=1)
  return labels


def single_finding_labels(multi_hot: np.ndarray) -> np.ndarray:
  """Class id (0..C-1) of images with exactly one positive label, else -1 (incl. none)."""
  labels = single_labels(multi_hot)
  labels[labels == np.shape(multi_hot)[1]] = -1
  return labels


def primary_labels(multi_hot: np.ndarray, finding_labels: Optional[Sequence[str]] = None,
                   names: Sequence[str] = FINDINGS) -> np.ndarray:
  """Class id of the first listed label (C = none of them) for every image.

  Args:
    multi_hot: [n, C] in the order of `names`.
    finding_labels: optional [n] ChestX-ray14 CSV 'Finding Labels' strings; when given,
      their order decides. Without them the first label in alphabetical order is used,
      which for NIH is the CSV order in all but 31 of the 112,120 official rows.
    names: the C label names (default NIH's FINDINGS).
  """
  multi_hot = np.asarray(multi_hot).astype(bool)
  labels = np.full(multi_hot.shape[0], len(names), np.int64)
  if finding_labels is not None:
    for i, text in enumerate(finding_labels):
      text = text.decode() if isinstance(text, bytes) else str(text)
      present = parse_finding_labels(text)
      if present:
        labels[i] = FINDINGS.index(present[0])
    return labels
  alphabetical = sorted(range(len(names)), key=lambda j: names[j])
  for j in reversed(alphabetical):  # the last write is the alphabetically first label
    labels[multi_hot[:, j]] = j
  return labels


def _describe(mode: str, names: tuple, no_finding: str) -> str:
  """The report's description of a multi-label mode: NIH's own words for its findings."""
  if names == FINDINGS:
    return LABEL_SET_DESCRIPTIONS[mode]
  listed = f"the {len(names)} labels ({', '.join(names)})"
  return {
      "single_finding": f"{listed}; images with exactly one of them ({no_finding} and "
                        f"multi-label images left out)",
      "single": f"{listed} + {no_finding}; images with exactly one of these "
                f"{len(names) + 1} classes",
      "primary": f"{listed} + {no_finding}; every image, class = its alphabetically first "
                 f"label",
  }[mode]


def _binary_labels(mode: str, examples: dict, class_names) -> LabelSet:
  target = mode.split(":", 1)[1]
  describe = LABEL_SET_DESCRIPTIONS["binary"].format
  if is_multi_label(examples):
    multi_hot = np.asarray(examples["labels"])
    names, no_finding = multi_label_names(multi_hot.shape[1], class_names)
    by_lower = {name.lower(): j for j, name in enumerate(names)}
    if target.lower() == no_finding.lower() and target.lower() not in by_lower:
      # Normal vs abnormal: 1 for images without any of the C labels.
      none = (multi_hot.sum(axis=1) == 0).astype(np.int64)
      any_label = "any finding" if names == FINDINGS else "any label"
      return LabelSet(f"binary:{no_finding}", none, (any_label, no_finding),
                      describe(target=no_finding), names)
    if target.lower() not in by_lower:
      raise ValueError(f"--label_mode={mode!r}: unknown finding {target!r}; accepted: "
                       f"{', '.join('binary:' + name for name in names + (no_finding,))}.")
    column = by_lower[target.lower()]
    name = names[column]
    labels = multi_hot[:, column].astype(np.int64)
    return LabelSet(f"binary:{name}", labels, (f"no {name}", name), describe(target=name),
                    names)
  names = list(class_names or [])
  by_lower = {str(n).lower(): j for j, n in enumerate(names)}
  if target.lower() not in by_lower:
    raise ValueError(f"--label_mode={mode!r}: unknown class {target!r}; accepted: "
                     f"{', '.join('binary:' + str(n) for n in names)}.")
  class_id = by_lower[target.lower()]
  label = np.asarray(examples["label"]).astype(np.int64)
  labels = np.where(label < 0, -1, (label == class_id).astype(np.int64))
  return LabelSet(f"binary:{names[class_id]}", labels,
                  (f"not {names[class_id]}", names[class_id]),
                  describe(target=names[class_id]))


def select_labels(mode: Optional[str], examples: dict,
                  class_names: Optional[Sequence[str]] = None) -> LabelSet:
  """Applies a label mode to the per-example arrays of one split.

  Args:
    mode: one of LABEL_MODES ('binary:<label or class name>'); None = the default
      (`default_label_mode`).
    examples: arrays with 'labels' [n, C] (multi-label data) and/or 'label' [n].
    class_names: names of the dataset's 'label' classes (multi-label data: the C label
      names + the no-finding class, see `multi_label_names`).

  Returns:
    LabelSet(mode actually applied, labels [n] with -1 = dropped, class names,
    description, names of the multi-hot columns).

  Raises:
    ValueError: an unknown mode or class, naming what is accepted.
  """
  mode = mode or default_label_mode(examples)
  if mode.startswith("binary:"):
    return _binary_labels(mode, examples, class_names)
  if mode not in ("single_finding", "single", "primary", "label"):
    raise ValueError(f"--label_mode={mode!r}: accepted values are {', '.join(LABEL_MODES)}.")
  label_names = ()
  if is_multi_label(examples):
    multi_hot = examples["labels"]
    label_names, no_finding = multi_label_names(np.shape(multi_hot)[1], class_names)
    with_none = label_names + (no_finding,)
    if mode == "single_finding":
      return LabelSet(mode, single_finding_labels(multi_hot), label_names,
                      _describe(mode, label_names, no_finding), label_names)
    if mode == "single":
      return LabelSet(mode, single_labels(multi_hot), with_none,
                      _describe(mode, label_names, no_finding), label_names)
    if mode == "primary":
      text = examples.get("finding_labels") if label_names == FINDINGS else None
      return LabelSet(mode, primary_labels(multi_hot, text, label_names), with_none,
                      _describe(mode, label_names, no_finding), label_names)
  if "label" not in examples:
    raise ValueError(f"--label_mode={mode!r}: the dataset has no 'label' feature; its "
                     f"features are {sorted(examples)}.")
  labels = np.asarray(examples["label"]).astype(np.int64).reshape(-1)
  names = tuple(class_names) if class_names else tuple(
      str(i) for i in range(int(labels.max()) + 1 if labels.size else 0))
  return LabelSet("label", labels, names, LABEL_SET_DESCRIPTIONS["label"] +
                  f" ({', '.join(map(str, names))})", label_names)


def check_label_mode(mode: Optional[str], class_names: Optional[Sequence[str]]) -> None:
  """Fails early (before feature extraction) on a label mode that cannot apply.

  Args:
    mode: the requested label mode (None = default).
    class_names: the dataset's 'label' class names, when known.
  """
  if mode is None or mode in ("single_finding", "single", "primary", "label"):
    return
  if not mode.startswith("binary:"):
    raise ValueError(f"--label_mode={mode!r}: accepted values are {', '.join(LABEL_MODES)}.")
  if not class_names:
    return  # checked against the examples' features later
  # ChestX-ray14 (its 'label' classes are the findings + No Finding): findings only.
  known = (LABEL_NAMES if set(FINDINGS) <= set(class_names) else tuple(map(str, class_names)))
  if mode.split(":", 1)[1].lower() not in {name.lower() for name in known}:
    raise ValueError(f"--label_mode={mode!r}: unknown class; accepted: "
                     f"{', '.join('binary:' + name for name in known)}.")


def attach_csv_finding_text(examples: dict, csv_path: str) -> dict:
  """Adds 'finding_labels' (the CSV text, in its order) by 'image_index', for label mode
  'primary'.

  Raises:
    ValueError: the examples have no 'image_index', or an image is not in the CSV.
  """
  if "image_index" not in examples:
    raise ValueError(f"--labels_csv={csv_path}: the dataset has no 'image_index' feature to "
                     f"look rows up by; its features are {sorted(examples)}.")
  table = data_entry_table(csv_path)
  text_by_image = dict(zip(table["image_index"].tolist(), table["finding_labels"].tolist()))
  names = [name.decode() if isinstance(name, bytes) else str(name)
           for name in examples["image_index"]]
  missing = [name for name in names if name not in text_by_image]
  if missing:
    raise ValueError(f"--labels_csv={csv_path}: {len(missing)} image(s) not in the CSV, "
                     f"e.g. {missing[:3]}.")
  return dict(examples, finding_labels=np.asarray([text_by_image[name] for name in names]))
