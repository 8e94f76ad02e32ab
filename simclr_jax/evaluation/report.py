"""The report of one evaluation: report.json, report.md, features.npz and PNG plots.

Reports are never mixed:
  * one evaluation at a time per output folder: `reserve(out_dir)` holds a lock
    (`.<out name>.report-lock` beside the folder, flock) for as long as an evaluation may
    write there; a second one is refused at once (ReportBusyError) instead of
    interleaving its files with the first's;
  * an output folder that holds an earlier report is refused (`check_out_dir`) unless the
    caller passes overwrite=True, and then every file of the earlier report (its plots
    included, also those this run will not draw) is removed when the new one goes in;
  * a report is written whole into a new folder beside the output folder
    (`.<out name>.report-tmp-<pid>-...`) and only then moved into place (`commit`: one
    rename when the output folder is new, else one rename per file, Ctrl-C deferred until
    they are done), so an interrupted or failed evaluation leaves nothing half-written.
Files in the folder that no report wrote are left alone.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import shutil
import signal
import tempfile
import threading

import numpy as np

from simclr_jax.evaluation import pictures as pictures_lib

REPORT_FILES = ("report.json", "report.md", "features.npz")
PLOT_FILES = ("embedding_pca.png", "cluster_confusion.png", "label_efficiency.png",
              *pictures_lib.FILES)

METRIC_DEFINITIONS = {
    "encoder_init": "how the evaluated weights were obtained (trained checkpoint, "
                    "torchvision-style random init, torchvision weights).",
    "training": "what trained a run's weights (report.json `training`, `init_from`): the "
                "init source (path, step, sha256 of its config.json or weights file), the "
                "fine-tuning mode, the label mode, the label fraction and the patient-wise "
                "subset trained on (images, patients, positives per class, sha256 of the "
                "record ids).",
    "label set": "which examples the label mode keeps and what their classes are; k-means "
                 "k defaults to the number of these classes.",
    "cluster_accuracy": "k-means clusters matched one-to-one to classes by the Hungarian "
                        "algorithm on the cluster x class contingency matrix; fraction of "
                        "examples whose class is the one matched to their cluster "
                        "(unmatched clusters count as wrong).",
    "nmi": "normalised mutual information between clusters and classes (arithmetic mean "
           "normalisation; scikit-learn).",
    "ari": "adjusted Rand index between clusters and classes (0 = chance, 1 = identical).",
    "purity": "fraction of examples in the majority class of their cluster (many-to-one).",
    "linear_auroc_macro": "logistic regression (scikit-learn's objective, C = 1) on "
                          "standardised frozen features, fitted on the train split, scored "
                          "on the evaluated split; mean AUROC over labels (multi-label: one "
                          "sigmoid per finding) with a defined AUROC.",
    "linear_accuracy": "top-1 accuracy of that probe (single-label data).",
    "knn_accuracy": "cosine k-nearest-neighbour majority vote (k = knn_k), train split -> "
                    "evaluated split; knn_accuracy_weighted votes with exp(cos / 0.07).",
    "knn_auroc_macro": "AUROC of the exp(cos / 0.07)-weighted fraction of the k neighbours "
                       "holding a label (per finding on multi-label data), macro mean.",
    "patient_shortcut": "within the evaluated split, the fraction of images whose cosine "
                        "nearest neighbour (itself excluded) is another image of the same "
                        "patient, over the patient_shortcut_images images whose patient has "
                        "several there; patient_shortcut_chance is what a random neighbour "
                        "would give them. Far above chance: the features recognise people, "
                        "which flatters kNN and probe figures on splits that are not "
                        "patient-wise.",
    "label_fractions": "the linear probe fitted on a patient-wise random subsample of the "
                       "train labels (fixed seed; at least one positive per class added "
                       "where the train split has one).",
    "feature_quality": "mean cosine similarity of distinct pairs within the same class vs "
                       "from different classes (gap = within - between).",
    "classifier_auroc_macro": "a supervised or fine-tuned run's own classifier head, scored "
                              "on the targets it was trained on (its config's "
                              "supervised.label_mode); macro over the classes with "
                              "positives in the train split and the evaluated split.",
    "macro AUROC classes": "every macro AUROC (linear probe, kNN, label fractions, "
                           "classifier) averages only the classes with positives and "
                           "negatives in the train split (else nothing could be learnt: "
                           "per-class AUROC n/a) and in the evaluated split (else AUROC is "
                           "undefined); <name>_macro_classes and <name>_macro_left_out say "
                           "which, and why. A binary problem has one AUROC, of its second "
                           "class.",
    "95 % interval": "<name>_ci95: percentile interval of 1000 bootstrap resamples of the "
                     "evaluated split's PATIENTS (with replacement, fixed seed, the same "
                     "resamples for every encoder), so several images of one patient do "
                     "not narrow it.",
    "patients_in_several_splits": "from the dataset's metadata: patients with images in "
                                  "more than one split (a leak that flatters the probe and "
                                  "kNN; a warning when not 0); null when the dataset was "
                                  "prepared before the count was recorded.",
}


class ReportExistsError(ValueError):
  """The output folder holds an earlier report and overwriting was not asked for."""


class ReportBusyError(ValueError):
  """Another evaluation is writing into the output folder now."""


def earlier_report_files(out_dir: str) -> list:
  """Names of the files of an earlier report in `out_dir` (plots named in it included)."""
  if not os.path.isdir(out_dir):
    return []
  names = set(REPORT_FILES) | set(PLOT_FILES)
  try:
    with open(os.path.join(out_dir, "report.json")) as file:
      earlier = json.load(file)
    names |= {os.path.basename(str(name)) for name in earlier.get("plots") or []}
  except (OSError, ValueError, AttributeError):
    pass
  return sorted(name for name in names if os.path.isfile(os.path.join(out_dir, name)))


def check_out_dir(out_dir: str, overwrite: bool) -> None:
  """Refuses an output folder holding an earlier report unless `overwrite`.

  Raises:
    ReportExistsError: naming the folder, the files found and the two ways out.
  """
  found = earlier_report_files(out_dir)
  if found and not overwrite:
    raise ReportExistsError(
        f"--out={out_dir} holds an earlier report ({', '.join(found)}); pass --overwrite to "
        f"replace it (report and plots) or choose another --out.")


# ----------------------------------------------------------------------------- one writer


_HELD = {}   # absolute output folder -> [lock file descriptor, depth] held by this process


def _beside(out_dir: str, suffix: str) -> str:
  """`PARENT/.<out name><suffix>`: our files next to the output folder, never inside it."""
  out_dir = os.path.abspath(out_dir)
  return os.path.join(os.path.dirname(out_dir), f".{os.path.basename(out_dir)}{suffix}")


def _take_lock(out_dir: str) -> int:
  """An exclusive flock on the output folder's lock file; the descriptor.

  Raises:
    ReportBusyError: another process holds it (naming its pid).
  """
  path = _beside(out_dir, ".report-lock")
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.access(os.path.dirname(path), os.W_OK):
      raise PermissionError("not writable")
  except OSError as error:
    raise ValueError(f"--out={out_dir}: its folder {os.path.dirname(path)} cannot be written "
                     f"({error}); a report is staged beside --out before it goes in, so "
                     f"choose an --out in a writable folder.") from None
  while True:
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
      if error.errno not in (errno.EAGAIN, errno.EACCES):
        os.close(descriptor)
        raise
      holder = os.pread(descriptor, 64, 0).decode(errors="replace").strip() or "unknown"
      os.close(descriptor)
      raise ReportBusyError(
          f"--out={out_dir} is being written by another evaluation (pid {holder}, lock "
          f"{path}); wait for it to finish or choose another --out.") from None
    try:
      same = os.stat(path).st_ino == os.fstat(descriptor).st_ino
    except FileNotFoundError:
      same = False
    if same:  # not a lock file its previous holder removed while we opened it
      os.ftruncate(descriptor, 0)
      os.pwrite(descriptor, str(os.getpid()).encode(), 0)
      return descriptor
    os.close(descriptor)


@contextlib.contextmanager
def reserve(out_dir: str, overwrite: bool = False):
  """Holds `out_dir` for one evaluation: no other process writes a report there meanwhile.

  Re-entrant within a process. On entry an earlier report is refused unless `overwrite`
  (`check_out_dir`); stale temporary folders of killed evaluations are removed.

  Raises:
    ReportBusyError: another evaluation holds the folder (refused at once, not waited for).
    ReportExistsError: see `check_out_dir`.
  """
  key = os.path.abspath(out_dir)
  if key in _HELD:
    _HELD[key][1] += 1
    try:
      check_out_dir(out_dir, overwrite)
      yield
    finally:
      _HELD[key][1] -= 1
    return
  descriptor = _take_lock(out_dir)
  _HELD[key] = [descriptor, 1]
  try:
    staging_prefix = os.path.basename(_beside(out_dir, ".report-tmp-"))
    parent = os.path.dirname(key)
    for name in os.listdir(parent):
      if name.startswith(staging_prefix):  # ours, left by a killed evaluation
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    check_out_dir(out_dir, overwrite)
    yield
  finally:
    del _HELD[key]
    with contextlib.suppress(OSError):
      os.unlink(_beside(out_dir, ".report-lock"))  # while still holding it
    os.close(descriptor)


@contextlib.contextmanager
def staging(out_dir: str):
  """A new, empty folder beside `out_dir` to write a report into before `commit`;
  removed (with anything left in it) on the way out."""
  os.makedirs(os.path.dirname(os.path.abspath(out_dir)), exist_ok=True)
  folder = tempfile.mkdtemp(prefix=os.path.basename(_beside(out_dir, ".report-tmp-"))
                            + f"{os.getpid()}-", dir=os.path.dirname(os.path.abspath(out_dir)))
  try:
    yield folder
  finally:
    shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _interrupts_deferred():
  """Ctrl-C waits until the block is done (then raises KeyboardInterrupt)."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  received = []
  previous = signal.signal(signal.SIGINT, lambda number, frame: received.append(number))
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
  if received:
    raise KeyboardInterrupt


def commit(folder: str, out_dir: str, earlier: list) -> None:
  """Moves a report written whole into `folder` into `out_dir`, replacing the files
  `earlier` (paths of an earlier report the caller may replace). The caller holds
  `reserve(out_dir)`."""
  with _interrupts_deferred():
    for path in earlier:
      os.remove(path)
    if not os.path.exists(out_dir):
      os.rename(folder, out_dir)   # a new folder: one atomic rename
      return
    for root, _, names in os.walk(folder):
      target = os.path.join(out_dir, os.path.relpath(root, folder))
      os.makedirs(target, exist_ok=True)
      for name in names:
        os.replace(os.path.join(root, name), os.path.join(target, name))


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  raise TypeError(f"not JSON serialisable: {type(value)}")


def clean_for_json(value):
  """NaN -> None so that report.json is strict JSON."""
  if isinstance(value, dict):
    return {key: clean_for_json(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [clean_for_json(item) for item in value]
  if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
    return None
  return value


def write_json(path: str, value) -> None:
  """Strict JSON, written atomically (a reader never sees half a file)."""
  temporary = path + ".tmp"
  with open(temporary, "w") as file:
    json.dump(clean_for_json(value), file, indent=2, default=_json_default)
  os.replace(temporary, path)


def format_value(value, digits: int = 4) -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return "n/a"
  if isinstance(value, float):
    return f"{value:.{digits}f}"
  return str(value)


def with_interval(value, interval, digits: int = 4) -> str:
  """'0.8123 [0.7790, 0.8412]': a figure and its 95 % interval (when there is one)."""
  text = format_value(value, digits)
  if isinstance(interval, (list, tuple)) and len(interval) == 2 and text != "n/a":
    text += f" [{format_value(interval[0], digits)}, {format_value(interval[1], digits)}]"
  return text


def _macro_line(report: dict, name: str, title: str) -> list:
  """Which classes entered a macro AUROC and which were left out, and why."""
  classes = report.get(f"{name}_macro_classes")
  if classes is None:
    return []
  left_out = report.get(f"{name}_macro_left_out") or {}
  text = f"- {title} macro over {len(classes)} class(es): {', '.join(classes) or 'none'}"
  if left_out:
    text += "; left out: " + "; ".join(f"{c} ({why})" for c, why in left_out.items())
  return [text]


def _per_class_table(report: dict, name: str, title: str) -> list:
  if not isinstance(report.get(name), dict):
    return []
  intervals = report.get(f"{name}_ci95") or {}
  lines = ["", f"## {title}", "", "| label | AUROC [95 % interval] |", "|---|---|"]
  lines += [f"| {label} | {with_interval(value, intervals.get(label))} |"
            for label, value in report[name].items()]
  return lines


def _training_lines(training) -> list:
  """The run's init source, label fraction and subset (report.json `training`)."""
  if not training:
    return []
  source = training.get("init_from")
  lines = []
  if source:
    lines.append(f"- initialised from: {source.get('kind')} `{source.get('path')}`"
                 + (f" step {source.get('step')} (its config.json sha256 "
                    f"`{source.get('sha256')}`, {source.get('objective')} run)"
                    if source.get("kind") == "workdir" else
                    f" (sha256 `{source.get('sha256')}`)"))
  if "fine_tuning" in training:
    subset = training.get("subset") or {}
    positives = ", ".join(f"{name} {count}" for name, count in
                          zip(subset.get("class_names") or [], subset.get("positives") or []))
    lines.append(f"- training: {training['fine_tuning']}; label mode "
                 f"`{training.get('label_mode') or 'the dataset’s own'}`; label fraction "
                 f"{training.get('label_fraction')} (subset seed {training.get('subset_seed')}):"
                 f" {subset.get('num_images')} images of {subset.get('num_patients')} patients,"
                 f" positives {positives or 'n/a'}; subset sha256 `{subset.get('ids_sha256')}`"
                 + (f"; checkpoints scored on validation every "
                    f"{training['select_by_validation']} steps"
                    if training.get("select_by_validation") else ""))
  return lines


def report_markdown(report: dict) -> str:
  """Human-readable report: summary table, per-label AUROC, label fractions, definitions."""
  lines = [f"# Evaluation: {report.get('encoder', '')}", ""]
  if report.get("warnings"):
    lines += ["**Warnings:**", ""] + [f"- {text}" for text in report["warnings"]] + [""]
  lines += [f"- encoder init: {report.get('encoder_init')}"]
  lines += _training_lines(report.get("training"))
  lines += [
            f"- dataset: `{report.get('dataset')}` split `{report.get('split')}` "
            f"(probe/kNN train split: `{report.get('train_split')}`); patients in several "
            f"splits: {format_value(report.get('patients_in_several_splits'))}",
            f"- features: {report.get('features')} ({report.get('feature_dim')}-d), "
            f"checkpoint step: {report.get('checkpoint_step')}",
            f"- label mode `{report['label_mode']}`: {report.get('label_set')}; "
            f"{report['num_examples']} of {report['num_examples_total']} examples kept, "
            f"{report['num_classes']} classes, k = {report.get('k')}"]
  if report.get("classifier_targets"):
    lines.append(f"- classifier head scored on its training targets: "
                 f"{report['classifier_targets']} ({report.get('classifier_examples')} "
                 f"examples)")
  elif report.get("classifier_skipped"):
    lines.append(f"- classifier: skipped, {report['classifier_skipped']}")
  lines.append("- [a, b]: 95 % bootstrap interval, resampling patients")
  lines.append("")
  rows = [("cluster accuracy", report.get("cluster_accuracy")), ("NMI", report.get("nmi")),
          ("ARI", report.get("ari")), ("purity", report.get("purity")),
          ("linear AUROC (macro)", with_interval(report.get("linear_auroc_macro"),
                                                 report.get("linear_auroc_macro_ci95"))),
          ("linear accuracy", with_interval(report.get("linear_accuracy"),
                                            report.get("linear_accuracy_ci95"))),
          (f"kNN accuracy (k={report.get('knn_k')})", report.get("knn_accuracy")),
          ("kNN accuracy, weighted", report.get("knn_accuracy_weighted")),
          ("kNN AUROC (macro)", with_interval(report.get("knn_auroc_macro"),
                                              report.get("knn_auroc_macro_ci95"))),
          ("patient shortcut (nearest neighbour of the same patient)",
           report.get("patient_shortcut")),
          ("patient shortcut, chance", report.get("patient_shortcut_chance")),
          ("classifier AUROC (macro)", with_interval(report.get("classifier_auroc_macro"),
                                                     report.get("classifier_auroc_macro_ci95"))),
          ("classifier accuracy", with_interval(report.get("classifier_accuracy"),
                                                report.get("classifier_accuracy_ci95")))]
  quality = report.get("feature_quality") or {}
  rows += [("cosine within class", quality.get("within_class_cosine")),
           ("cosine between classes", quality.get("between_class_cosine")),
           ("feature extraction (s)", report.get("feature_extraction_seconds")),
           ("clustering (s)", report.get("clustering_seconds")),
           ("linear probe (s)", report.get("linear_probe_seconds"))]
  lines += ["| metric | value |", "|---|---|"]
  lines += [f"| {name} | {format_value(value)} |" for name, value in rows
            if value is not None and value != "n/a"]
  macro_lines = (_macro_line(report, "linear_auroc", "linear AUROC")
                 + _macro_line(report, "knn_auroc", "kNN AUROC")
                 + _macro_line(report, "classifier_auroc", "classifier AUROC"))
  if macro_lines:
    lines += [""] + macro_lines
  if report.get("linear_probe_iterations") is not None:
    gradient = report.get("linear_probe_gradient_max")
    lines += [f"- linear probe solver ({report.get('linear_probe_solver')}): "
              f"{report['linear_probe_iterations']} of at most "
              f"{report.get('linear_probe_max_iter')} iterations"
              + (f", final max |gradient| {gradient:.2e}" if gradient is not None else "")
              + (" — stopped on the iteration cap" if report.get(
                  "linear_probe_stopped_at_cap") else "")]
  lines += _per_class_table(report, "linear_auroc", "Linear-probe AUROC per label")
  lines += _per_class_table(report, "classifier_auroc", "Classifier AUROC per label")
  if report.get("label_fractions"):
    lines += ["", "## Label efficiency (linear probe on a patient-wise subsample)", "",
              "| fraction | train examples | patients | macro AUROC [95 % interval] | "
              "classes in macro | accuracy |", "|---|---|---|---|---|---|"]
    for entry in report["label_fractions"]:
      classes = entry.get("linear_auroc_macro_classes")
      lines.append(f"| {entry['fraction']} | {entry['num_train_examples']} | "
                   f"{entry['num_train_patients']} | "
                   f"{with_interval(entry.get('linear_auroc_macro'), entry.get('linear_auroc_macro_ci95'))} | "
                   f"{len(classes) if classes is not None else 'n/a'} | "
                   f"{format_value(entry.get('linear_accuracy'))} |")
  lines += ["", "## Class counts (evaluated split, this label mode)", "",
            "| class | examples |", "|---|---|"]
  lines += [f"| {name} | {count} |" for name, count in report["class_counts"].items()]
  if report.get("plots"):
    captions = report.get("plot_captions") or {}
    lines += ["", "## Plots", ""] + [f"![{name}]({name})" + (
        f"\n\n*{captions[name]}*\n" if name in captions else "") for name in report["plots"]]
  lines += ["", "## Definitions", ""]
  lines += [f"- **{name}**: {text}" for name, text in METRIC_DEFINITIONS.items()]
  return "\n".join(lines) + "\n"


def _caption(figure, report: dict) -> None:
  """Every plot says what produced it: encoder and its init/step, data, label set, k."""
  text = (f"{report.get('encoder_init', report.get('encoder', ''))} | "
          f"{report.get('dataset')} split {report.get('split')} | label mode "
          f"{report.get('label_mode')}, k = {report.get('k')}")
  figure.text(0.5, 0.005, text, ha="center", va="bottom", fontsize=6, wrap=True)
  # Lay the axes out above a strip for it (a fixed height: tall figures keep their spacing).
  figure.tight_layout(rect=(0, min(0.14, 0.45 / figure.get_figheight()), 1, 1))


def write_plots(report: dict, arrays: dict, out_dir: str, *, max_points: int = 5000,
                seed: int = 0, pictures: pictures_lib.Prepared | None = None) -> list:
  """PCA embedding (by label, by cluster), cluster-vs-label matrix, label-efficiency curve,
  and the pictures (`pictures.draw`: embedding map, neighbours, saliency).

  Returns:
    paths of the PNG files written.
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import sklearn.decomposition
  from simclr_jax.evaluation import algorithms

  written = []

  def save(figure, name: str) -> None:
    path = os.path.join(out_dir, name)
    _caption(figure, report)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    written.append(path)

  kept = arrays["labels"] >= 0
  features, labels = arrays["features"][kept], arrays["labels"][kept]
  clusters = arrays["cluster_ids"][kept] if "cluster_ids" in arrays else None
  names = report["class_names"]
  rng = np.random.default_rng(seed)
  shown = (rng.choice(features.shape[0], max_points, replace=False)
           if features.shape[0] > max_points else np.arange(features.shape[0]))
  if features.shape[0] >= 2 and features.shape[1] >= 2:
    embedding = sklearn.decomposition.PCA(n_components=2, random_state=seed).fit_transform(
        features[shown])
    colourings = [(labels[shown], "label")]
    if clusters is not None:
      colourings.append((clusters[shown], "k-means cluster"))
    figure, axes = plt.subplots(1, len(colourings), figsize=(6.5 * len(colourings), 5.5),
                                squeeze=False)
    for axis, (colour_by, title) in zip(axes[0], colourings):
      axis.scatter(embedding[:, 0], embedding[:, 1], c=colour_by, s=4, cmap="tab20", vmin=0,
                   vmax=19 if colour_by.max() < 20 else None)
      axis.set_title(f"PCA of features, coloured by {title}")
      axis.set_xlabel("PC 1")
      axis.set_ylabel("PC 2")
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=plt.cm.tab20(i % 20),
                          label=name) for i, name in enumerate(names)]
    axes[0][0].legend(handles=handles, fontsize=7, loc="best", markerscale=0.8)
    save(figure, "embedding_pca.png")

  if clusters is not None and clusters.size:
    matrix, cluster_values, class_values = algorithms.contingency_matrix(labels, clusters)
    matching = algorithms.hungarian_matching(labels, clusters)
    # Order clusters by the class they are matched to, unmatched ones last.
    order = sorted(range(len(cluster_values)),
                   key=lambda r: (list(class_values).index(matching[cluster_values[r]])
                                  if cluster_values[r] in matching else len(class_values), r))
    figure, axis = plt.subplots(figsize=(max(6.5, 2.5 + 0.45 * len(cluster_values)),
                                         max(4.0, 1.5 + 0.4 * len(class_values))))
    shown_matrix = matrix[order].T  # [classes, clusters]
    image = axis.imshow(shown_matrix, cmap="Blues", aspect="auto")
    axis.set_xticks(range(len(order)), [str(cluster_values[r]) for r in order], fontsize=7)
    axis.set_yticks(range(len(class_values)), [names[c] for c in class_values], fontsize=7)
    axis.set_xlabel("k-means cluster (ordered by matched class)")
    axis.set_ylabel("class")
    axis.set_title(f"clusters vs labels, cluster accuracy {report['cluster_accuracy']:.3f}",
                   fontsize=10)
    if shown_matrix.size <= 400:
      for (row, column), count in np.ndenumerate(shown_matrix):
        axis.text(column, row, str(count), ha="center", va="center", fontsize=6,
                  color="white" if count > shown_matrix.max() / 2 else "black")
    figure.colorbar(image, ax=axis)
    save(figure, "cluster_confusion.png")

  fractions = [entry for entry in report.get("label_fractions") or []
               if entry.get("linear_auroc_macro") is not None]
  if fractions:
    figure, axis = plt.subplots(figsize=(5.5, 4))
    xs = [entry["fraction"] for entry in fractions]
    axis.plot(xs, [entry["linear_auroc_macro"] for entry in fractions], "o-",
              label="macro AUROC")
    if all("linear_accuracy" in entry for entry in fractions):
      axis.plot(xs, [entry["linear_accuracy"] for entry in fractions], "s--", label="accuracy")
    axis.set_xscale("log")
    axis.set_xlabel("fraction of train labels (patient-wise)")
    axis.set_ylabel("linear probe score")
    axis.set_title("label efficiency")
    axis.grid(True, alpha=0.3)
    axis.legend()
    save(figure, "label_efficiency.png")
  pictures_lib.draw(report, arrays, pictures, save, seed=seed)
  return written


def write_report(report: dict, arrays: dict, out_dir: str, *, plots: bool = True,
                 save_features: bool = True, overwrite: bool = False,
                 seed: int = 0, pictures: pictures_lib.Prepared | None = None) -> dict:
  """Writes report.json, report.md, features.npz and the plots into `out_dir`, whole:
  into a folder beside it first, then moved into place (`commit`), holding `reserve`.

  An earlier report there is refused (ReportExistsError) unless `overwrite`, which removes
  all of its files, so no stale plot survives; another evaluation writing there now is
  refused (ReportBusyError).

  Returns:
    the report as written (NaN -> None, 'plots' listing the PNG files).
  """
  with reserve(out_dir, overwrite), staging(out_dir) as folder:
    if save_features:
      np.savez(os.path.join(folder, "features.npz"), **arrays)
    report = dict(report)
    report["plots"] = ([os.path.basename(path) for path in
                        write_plots(report, arrays, folder, seed=seed, pictures=pictures)]
                       if plots else [])
    report = clean_for_json(report)
    write_json(os.path.join(folder, "report.json"), report)
    with open(os.path.join(folder, "report.md"), "w") as file:
      file.write(report_markdown(report))
    commit(folder, out_dir, [os.path.join(out_dir, name)
                             for name in earlier_report_files(out_dir)])
  return report
