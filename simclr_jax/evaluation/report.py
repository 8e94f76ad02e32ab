"""The report of one evaluation: report.json, report.md, features.npz and PNG plots.

Reports are never mixed: an output folder that holds an earlier report is refused
(`check_out_dir`) unless the caller passes overwrite=True, and then every file of the
earlier report (its plots included, also those this run will not draw) is removed before
the new one is written. Files in the folder that no report wrote are left alone.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from simclr_jax.evaluation import pictures as pictures_lib

REPORT_FILES = ("report.json", "report.md", "features.npz")
PLOT_FILES = ("embedding_pca.png", "cluster_confusion.png", "label_efficiency.png",
              *pictures_lib.FILES)

METRIC_DEFINITIONS = {
    "encoder_init": "how the evaluated weights were obtained (trained checkpoint, "
                    "torchvision-style random init, torchvision weights).",
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
    "label_fractions": "the linear probe fitted on a patient-wise random subsample of the "
                       "train labels (fixed seed; at least one positive per class added "
                       "where the train split has one).",
    "feature_quality": "mean cosine similarity of distinct pairs within the same class vs "
                       "from different classes (gap = within - between).",
}


class ReportExistsError(ValueError):
  """The output folder holds an earlier report and overwriting was not asked for."""


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


def remove_earlier_report(out_dir: str) -> list:
  """Deletes the files of an earlier report in `out_dir`; returns their names."""
  found = earlier_report_files(out_dir)
  for name in found:
    os.remove(os.path.join(out_dir, name))
  return found


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


def report_markdown(report: dict) -> str:
  """Human-readable report: summary table, per-label AUROC, label fractions, definitions."""
  lines = [f"# Evaluation: {report.get('encoder', '')}", ""]
  lines += [f"- encoder init: {report.get('encoder_init')}",
            f"- dataset: `{report.get('dataset')}` split `{report.get('split')}` "
            f"(probe/kNN train split: `{report.get('train_split')}`)",
            f"- features: {report.get('features')} ({report.get('feature_dim')}-d), "
            f"checkpoint step: {report.get('checkpoint_step')}",
            f"- label mode `{report['label_mode']}`: {report.get('label_set')}; "
            f"{report['num_examples']} of {report['num_examples_total']} examples kept, "
            f"{report['num_classes']} classes, k = {report.get('k')}", ""]
  rows = [("cluster accuracy", report.get("cluster_accuracy")), ("NMI", report.get("nmi")),
          ("ARI", report.get("ari")), ("purity", report.get("purity")),
          ("linear AUROC (macro)", report.get("linear_auroc_macro")),
          ("linear accuracy", report.get("linear_accuracy")),
          (f"kNN accuracy (k={report.get('knn_k')})", report.get("knn_accuracy")),
          ("kNN accuracy, weighted", report.get("knn_accuracy_weighted")),
          ("kNN AUROC (macro)", report.get("knn_auroc_macro"))]
  quality = report.get("feature_quality") or {}
  rows += [("cosine within class", quality.get("within_class_cosine")),
           ("cosine between classes", quality.get("between_class_cosine")),
           ("feature extraction (s)", report.get("feature_extraction_seconds")),
           ("clustering (s)", report.get("clustering_seconds")),
           ("linear probe (s)", report.get("linear_probe_seconds"))]
  lines += ["| metric | value |", "|---|---|"]
  lines += [f"| {name} | {format_value(value)} |" for name, value in rows if value is not None]
  if isinstance(report.get("linear_auroc"), dict):
    lines += ["", "## Linear-probe AUROC per label", "", "| label | AUROC |", "|---|---|"]
    lines += [f"| {name} | {format_value(value)} |"
              for name, value in report["linear_auroc"].items()]
  if report.get("label_fractions"):
    lines += ["", "## Label efficiency (linear probe on a patient-wise subsample)", "",
              "| fraction | train examples | patients | macro AUROC | accuracy |",
              "|---|---|---|---|---|"]
    for entry in report["label_fractions"]:
      lines.append(f"| {entry['fraction']} | {entry['num_train_examples']} | "
                   f"{entry['num_train_patients']} | "
                   f"{format_value(entry.get('linear_auroc_macro'))} | "
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
  """Writes report.json, report.md, features.npz and the plots into `out_dir`.

  An earlier report there is refused (ReportExistsError) unless `overwrite`, which removes
  all of its files first, so no stale plot survives.

  Returns:
    the report as written (NaN -> None, 'plots' listing the PNG files).
  """
  check_out_dir(out_dir, overwrite)
  os.makedirs(out_dir, exist_ok=True)
  remove_earlier_report(out_dir)
  if save_features:
    np.savez(os.path.join(out_dir, "features.npz"), **arrays)
  report = dict(report)
  report["plots"] = ([os.path.basename(path) for path in
                      write_plots(report, arrays, out_dir, seed=seed, pictures=pictures)]
                     if plots else [])
  report = clean_for_json(report)
  write_json(os.path.join(out_dir, "report.json"), report)
  with open(os.path.join(out_dir, "report.md"), "w") as file:
    file.write(report_markdown(report))
  return report
