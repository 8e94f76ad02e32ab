"""Pictures of what an encoder learned, for the report beside its figures.

  neighbours.png     `NUM_QUERIES` evaluated images (queries spread over the classes, chosen
                     from the seed), each followed by its `NUM_NEIGHBOURS` most
                     cosine-similar TRAIN images: label, cosine similarity, and a red frame
                     + "same patient" where the neighbour is a film of the query's patient.
  embedding_map.png  the evaluated split's features in 2-D, coloured by class: UMAP when
                     umap-learn is importable, else scikit-learn's t-SNE (fixed seed, at
                     most `MAP_MAX_POINTS` points); report.json names the method
                     (`embedding_map_method`).
  saliency.png       only for an encoder with a classifier head (a supervised or fine-tuned
                     run): |d score / d input| of the head's predicted class (input-gradient
                     saliency, Simonyan et al. 2014, averaged over noisy copies: SmoothGrad)
                     over a few evaluated images of each class, on the device.

Two steps, because evaluation and report writing are separate:
  `prepare` (offline.evaluate_encoder, process 0) does what needs the features, the
    dataset and the encoder's variables: the neighbours (on the device), the few images
    the grid shows (re-read from the data source by index: no split's pixels are held),
    and the saliency maps (on the device).
  `draw` (report.write_plots) draws the figures through the report's `save` helper and
    records `embedding_map_method` and a caption per picture (`plot_captions`) in the
    report, which report.md prints under each picture.
"""
from __future__ import annotations

import dataclasses
import logging
import textwrap
from typing import Callable, NamedTuple, Optional

import numpy as np

from simclr_jax.data import labels as labels_lib
from simclr_jax.evaluation.algorithms import neighbours as neighbours_lib

FILES = ("neighbours.png", "embedding_map.png", "saliency.png")
NUM_QUERIES = 8
NUM_NEIGHBOURS = 8
MAP_MAX_POINTS = 2000
MAP_PCA_DIMS = 50          # features are reduced to this many principal components first
TSNE_ITERATIONS = 500      # demo's 1,000 points: the layout of 1,000 iterations, half the time
SALIENCY_PER_CLASS = 3
SALIENCY_MAX_CLASSES = 6   # the most frequent classes of the evaluated split
SALIENCY_SAMPLES = 16      # SmoothGrad: noisy copies averaged ...
SALIENCY_NOISE = 0.15      # ... with noise of this standard deviation x the value range


# ------------------------------------------------------------------ choosing and neighbours


def choose_queries(labels, count: int, seed: int) -> np.ndarray:
  """`count` rows spread over the classes (labels >= 0), deterministic in `seed`.

  Classes take turns (the most frequent first, so with more classes than `count` the
  rarest are left out), each giving its rows in a seeded random order, until `count` rows
  are chosen or every class is used up.

  Returns:
    row indices [<= count] int64, ordered by class (then by draw).
  """
  labels = np.asarray(labels).reshape(-1)
  rng = np.random.default_rng(seed)
  classes, counts = np.unique(labels[labels >= 0], return_counts=True)
  pools = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
  pools = [pools[i] for i in np.argsort(-counts, kind="stable")]
  chosen = []
  turn = 0
  while len(chosen) < count and any(turn < len(pool) for pool in pools):
    chosen += [pool[turn] for pool in pools if turn < len(pool)][:count - len(chosen)]
    turn += 1
  chosen = np.asarray(chosen, np.int64)
  return chosen[np.argsort(labels[chosen], kind="stable")]


class Neighbours(NamedTuple):
  """See `nearest_train_neighbours`."""
  index: np.ndarray         # [q, k] int64 train rows, most similar first
  similarity: np.ndarray    # [q, k] float64 cosine similarity
  same_patient: np.ndarray  # [q, k] bool: the train row's patient is the query's


def nearest_train_neighbours(query_features, train_features, *, k: int = NUM_NEIGHBOURS,
                             query_patients=None, train_patients=None,
                             query_train_rows=None) -> Neighbours:
  """The k most cosine-similar train rows of each query (on the device; ties: lower row).

  Args:
    query_features: [q, d]; train_features: [n, d].
    k: neighbours per query (capped at the train rows available).
    query_patients, train_patients: [q] and [n] patient ids (None: no same-patient flags,
      all False).
    query_train_rows: [q] the queries' own rows in the train features when both come from
      one split (each query is then left out of its own neighbours); None otherwise.

  Returns:
    Neighbours(index, similarity, same_patient).
  """
  query_features = np.asarray(query_features, np.float32)
  train_features = np.asarray(train_features, np.float32)
  extra = 0 if query_train_rows is None else 1
  k = int(min(k, train_features.shape[0] - extra))
  similarity, index = neighbours_lib.knn_neighbours(train_features, query_features,
                                                    k=k + extra)
  if extra:
    own = np.asarray(query_train_rows).reshape(-1, 1)
    # Drop the query's own row; where it is not among the k + 1, drop the last.
    keep = index != own
    keep[keep.all(axis=1), -1] = False
    similarity = similarity[keep].reshape(-1, k)
    index = index[keep].reshape(-1, k)
  if query_patients is None or train_patients is None:
    same = np.zeros(index.shape, bool)
  else:
    same = np.asarray(train_patients)[index] == np.asarray(query_patients).reshape(-1, 1)
  return Neighbours(index, similarity, same)


# ------------------------------------------------------------------------------ saliency


def saliency_function(network, augment_config, image_size: int, input_channels: int, *,
                      softmax: bool, samples: int = 1, noise: float = 0.0) -> Callable:
  """saliency(variables, images uint8 [n, H, W, C], rng) -> (inputs [n, S, S, C], saliency
  [n, S, S], logits [n, K]), jitted.

  The saliency is |d score / d input|, the largest over the input channels, of the
  network's evaluation input (`augment.preprocess_eval`), for the class the head predicts
  (argmax of the logits): score = log softmax of that class for a softmax head (what makes
  it more likely than the others), its logit for a sigmoid (multi-label) head. The network
  returns (features, logits) in eval mode (BatchNorm running averages), so every image's
  gradient is its own. With `samples` > 1 it is SmoothGrad (Smilkov et al. 2017): the mean
  over `samples` copies of the input with Gaussian noise of standard deviation `noise` x
  the image's value range (one copy of the batch on the device at a time).
  """
  import jax
  import jax.numpy as jnp
  from simclr_jax import augment

  def scores(variables, inputs):
    logits = network.apply(variables, inputs, train=False)[1].astype(jnp.float32)
    return jax.nn.log_softmax(logits) if softmax else logits

  @jax.jit
  def saliency(variables, images, rng):
    inputs = augment.preprocess_eval(images, augment_config, image_size)  # [n, S, S, c]
    if inputs.shape[-1] != input_channels:
      inputs = jnp.repeat(inputs, input_channels, axis=-1)  # grey into an RGB stem
    logits = network.apply(variables, inputs, train=False)[1].astype(jnp.float32)
    predicted = jnp.argmax(logits, axis=-1)

    def chosen(x):  # the predicted classes' scores; each image's gradient is its own
      return jnp.sum(jnp.take_along_axis(scores(variables, x), predicted[:, None], axis=1))

    spread = noise * (inputs.max(axis=(1, 2, 3), keepdims=True)
                      - inputs.min(axis=(1, 2, 3), keepdims=True))

    def add_sample(total, key):
      noisy = inputs + spread * jax.random.normal(key, inputs.shape, inputs.dtype)
      return total + jnp.max(jnp.abs(jax.grad(chosen)(noisy)), axis=-1), None

    total, _ = jax.lax.scan(add_sample, jnp.zeros(inputs.shape[:-1], jnp.float32),
                            jax.random.split(rng, samples))
    return inputs, total / samples, logits

  return saliency


def classifier_saliency(encoder, images: np.ndarray, *, softmax: bool,
                        samples: int = SALIENCY_SAMPLES, noise: float = SALIENCY_NOISE,
                        seed: int = 0) -> dict:
  """Input-gradient saliency of an encoder's classifier head (see `saliency_function`).

  Args:
    encoder: an `encoders.Encoder` whose variables hold {'encoder', 'classifier'}.
    images: uint8 [n, H, W, C].
    softmax: the head was trained with softmax cross-entropy (else sigmoid, multi-label).
    samples, noise: SmoothGrad's noisy copies and their noise level (1, 0: the plain
      gradient).
    seed: the noise.

  Returns:
    {'inputs' [n, S, S] (the network's input, first channel), 'saliency' [n, S, S],
     'logits' [n, K]} as numpy.
  """
  import jax
  from simclr_jax import augment
  from simclr_jax.evaluation import encoders
  config = encoder.config
  network, variables = encoders.classifier_network(encoder)
  saliency = saliency_function(
      network, config.get("augment") or augment.default_config(), int(config.image_size),
      int(np.shape(variables["params"]["encoder"]["conv_init"]["kernel"])[2]),
      softmax=softmax, samples=samples, noise=noise)
  inputs, maps, logits = saliency(variables, np.asarray(images, np.uint8),
                                  jax.random.PRNGKey(seed))
  return {"inputs": np.asarray(inputs)[..., 0], "saliency": np.asarray(maps),
          "logits": np.asarray(logits)}


# ------------------------------------------------------------------------------- prepare


@dataclasses.dataclass
class Prepared:
  """What `draw` needs beyond the report and its arrays (small: only shown images)."""
  neighbours: Optional[dict] = None   # see `_prepare_neighbours`
  saliency: Optional[dict] = None     # see `_prepare_saliency`
  notes: dict = dataclasses.field(default_factory=dict)  # picture -> why it is not drawn


def _read_images(dataset: str, data_dir: str, split: str, rows) -> dict:
  """{row: uint8 image [H, W, C]} of the given records only."""
  from simclr_jax import data
  source = data.data_source(dataset, str(data_dir), split)
  return {int(row): np.asarray(source[int(row)]["image"]) for row in np.unique(rows)}


def _tile_labels(examples: dict, label_set: labels_lib.LabelSet, rows,
                 class_names=None) -> list:
  """A short label for each of `rows`: its class under the label mode; for an example the
  mode leaves out, its positive labels (multi-label data: the dataset's label names, see
  `labels.multi_label_names`) or '(left out)'."""
  names = []
  if labels_lib.is_multi_label(examples):
    columns, none = labels_lib.multi_label_names(np.shape(examples["labels"])[1], class_names)
  for row in np.asarray(rows).reshape(-1):
    label = label_set.labels[row]
    if label >= 0:
      names.append(str(label_set.class_names[label]))
    elif labels_lib.is_multi_label(examples):
      positives = [columns[j] for j in np.flatnonzero(examples["labels"][row])]
      names.append("+".join(positives) if positives else none)
    else:
      names.append("(left out)")
  return names


def _prepare_neighbours(eval_examples: dict, train_examples: dict, report: dict,
                        class_names, dataset: str, data_dir: str, split: str,
                        train_split: str, seed: int) -> dict:
  eval_labels = labels_lib.select_labels(report["label_mode"], eval_examples, class_names)
  train_labels = labels_lib.select_labels(report["label_mode"], train_examples, class_names)
  queries = choose_queries(eval_labels.labels, NUM_QUERIES, seed)
  query_patients = train_patients = None
  if "patient_id" in eval_examples and "patient_id" in train_examples:
    query_patients = np.asarray(eval_examples["patient_id"])[queries]
    train_patients = np.asarray(train_examples["patient_id"])
  found = nearest_train_neighbours(
      np.asarray(eval_examples["features"])[queries], train_examples["features"],
      query_patients=query_patients, train_patients=train_patients,
      query_train_rows=queries if split == train_split else None)
  patients_in_train = (None if query_patients is None else
                       int(np.isin(query_patients, train_patients).sum()))
  return {"query_images": _read_images(dataset, data_dir, split, queries),
          "neighbour_images": _read_images(dataset, data_dir, train_split, found.index),
          "queries": queries, "neighbours": found,
          "query_labels": _tile_labels(eval_examples, eval_labels, queries, class_names),
          "neighbour_labels": [_tile_labels(train_examples, train_labels, rows, class_names)
                               for rows in found.index],
          "query_patients_in_train": patients_in_train, "train_split": train_split}


def _prepare_saliency(encoder, eval_examples: dict, labels: np.ndarray, class_names,
                      dataset: str, data_dir: str, split: str, seed: int) -> dict:
  """A few evaluated images of each of the most frequent classes, with their saliency."""
  classes, counts = np.unique(labels[labels >= 0], return_counts=True)
  classes = classes[np.argsort(-counts, kind="stable")][:SALIENCY_MAX_CLASSES]
  rng = np.random.default_rng(seed)
  rows = [sorted(rng.permutation(np.flatnonzero(labels == c))[:SALIENCY_PER_CLASS])
          for c in sorted(classes)]
  flat = np.asarray([row for group in rows for row in group], np.int64)
  images = _read_images(dataset, data_dir, split, flat)
  head_mode = encoder.classifier_label_mode  # '': the dataset's own labels
  multi_label_head = not head_mode and labels_lib.is_multi_label(eval_examples)
  result = classifier_saliency(encoder, np.stack([images[row] for row in flat]),
                               softmax=not multi_label_head, samples=SALIENCY_SAMPLES,
                               noise=SALIENCY_NOISE, seed=seed)
  try:
    head_names = labels_lib.select_labels(head_mode or None, eval_examples,
                                          class_names).class_names
  except ValueError:
    head_names = ()
  if len(head_names) != result["logits"].shape[1]:
    head_names = tuple(f"class {j}" for j in range(result["logits"].shape[1]))
  return dict(result, rows=flat, groups=[len(group) for group in rows],
              samples=SALIENCY_SAMPLES, noise=SALIENCY_NOISE,
              head_names=list(head_names), softmax=not multi_label_head,
              head_targets=(f"label mode {head_mode}" if head_mode else
                            "the multi-hot findings, one sigmoid each" if multi_label_head
                            else "the dataset's classes"))


def prepare(encoder, eval_examples: dict, train_examples: Optional[dict], report: dict,
            *, class_names, dataset: str, data_dir: str, split: str,
            train_split: Optional[str], seed: int) -> Prepared:
  """The neighbours, their images and the saliency maps (see the module docstring).

  Args:
    encoder: the evaluated `encoders.Encoder` (saliency only when it has a classifier).
    eval_examples, train_examples: the extracted splits ({'features', labels,
      'patient_id', ...}); neighbours need the train split's features.
    report: the report so far (its 'label_mode' is the one applied).
    class_names: the dataset's 'label' names (None without 'label').
    dataset, data_dir, split, train_split: where the shown images are re-read.
    seed: chooses the queries and the saliency images.

  Returns:
    Prepared, for `draw` (via report.write_report).
  """
  prepared = Prepared()
  if train_examples is not None and "features" in train_examples and train_split:
    prepared.neighbours = _prepare_neighbours(eval_examples, train_examples, report,
                                              class_names, dataset, data_dir, split,
                                              train_split, seed)
  else:
    prepared.notes["neighbours.png"] = ("no train-split features (choose --train_split and "
                                        "an evaluator that reads it: knn, linear_probe)")
  if encoder.has_classifier:
    labels = labels_lib.select_labels(report["label_mode"], eval_examples,
                                      class_names).labels
    prepared.saliency = _prepare_saliency(encoder, eval_examples, labels, class_names,
                                          dataset, data_dir, split, seed)
  else:
    prepared.notes["saliency.png"] = ("the encoder has no classifier head (a supervised or "
                                      "fine-tuned run's workdir has one)")
  for name, text in prepared.notes.items():
    logging.info("%s not drawn: %s.", name, text)
  return prepared


# ----------------------------------------------------------------------------- embedding


def embedding_map(features, *, seed: int = 0) -> tuple[np.ndarray, str]:
  """2-D coordinates of L2-normalised features (so distances follow cosine similarity).

  UMAP (umap-learn) when importable, else scikit-learn's Barnes-Hut t-SNE; both after a
  PCA to `MAP_PCA_DIMS` dimensions and seeded.

  Returns:
    (coordinates [n, 2], the method in words).
  """
  import sklearn.decomposition
  features = neighbours_lib.l2_normalise(np.asarray(features, np.float64))
  n = features.shape[0]
  dims = min(MAP_PCA_DIMS, features.shape[1], n)
  if dims < features.shape[1]:
    features = sklearn.decomposition.PCA(dims, random_state=seed).fit_transform(features)
  try:
    import umap
  except ImportError:
    umap = None
  if umap is not None:
    neighbours = int(min(15, n - 1))
    coordinates = umap.UMAP(n_components=2, n_neighbors=neighbours, min_dist=0.1,
                            random_state=seed, n_jobs=1,  # seeded: one thread anyway
                            ).fit_transform(features)
    return np.asarray(coordinates), (f"UMAP (umap-learn {umap.__version__}, n_neighbors "
                                     f"{neighbours}, seed {seed})")
  import sklearn.manifold
  perplexity = float(min(30.0, max(2.0, (n - 1) / 3)))
  coordinates = sklearn.manifold.TSNE(n_components=2, perplexity=perplexity, init="pca",
                                      max_iter=TSNE_ITERATIONS,
                                      random_state=seed).fit_transform(features)
  return np.asarray(coordinates), (f"t-SNE (scikit-learn {sklearn.__version__}, "
                                   f"perplexity {perplexity:g}, {TSNE_ITERATIONS} "
                                   f"iterations, seed {seed})")


# ---------------------------------------------------------------------------------- draw


def _where(report: dict) -> str:
  """What produced a picture: encoder, its init and checkpoint step, split, label set."""
  init = str(report.get("encoder_init"))
  step = ("" if "checkpoint step" in init else
          f"; checkpoint step {report.get('checkpoint_step') or 'none (not a checkpoint)'}")
  return (f"Encoder {report.get('encoder')}: {init}{step}; {report.get('features')} "
          f"features of {report.get('dataset')} split {report.get('split')}; label mode "
          f"{report.get('label_mode')} ({', '.join(map(str, report.get('class_names') or []))})")


def _show(axis, image, title: str = "", *, colour: Optional[str] = None,
          title_colour: str = "black") -> None:
  image = np.asarray(image)
  axis.imshow(image[..., 0] if image.ndim == 3 else image, cmap="gray",
              interpolation="nearest")
  axis.set_xticks([])
  axis.set_yticks([])
  axis.set_title(title, fontsize=7, color=title_colour, pad=2)
  for spine in axis.spines.values():
    spine.set_visible(colour is not None)
    if colour is not None:
      spine.set_edgecolor(colour)
      spine.set_linewidth(3.5)


def _suptitle(figure, *lines: str) -> None:
  """A figure title whose lines are wrapped to the figure's width (about 12 characters an
  inch at 9 points)."""
  width = int(figure.get_figwidth() * 12)
  figure.suptitle("\n".join(textwrap.fill(line, width) for line in lines), fontsize=9)


def _short(text: str, width: int = 18) -> str:
  return text if len(text) <= width else text[:width - 1] + "…"


def _draw_neighbours(plt, prepared: dict, report: dict, save, seed: int) -> str:
  found = prepared["neighbours"]
  rows, columns = found.index.shape
  figure, axes = plt.subplots(rows, columns + 1, figsize=(1.45 * (columns + 1), 1.65 * rows + 1.0),
                              squeeze=False)
  for r, query in enumerate(prepared["queries"]):
    _show(axes[r][0], prepared["query_images"][int(query)],
          f"QUERY #{int(query)}\n{_short(prepared['query_labels'][r])}", colour="tab:blue",
          title_colour="tab:blue")
    for c in range(columns):
      same = bool(found.same_patient[r, c])
      axis = axes[r][c + 1]
      _show(axis, prepared["neighbour_images"][int(found.index[r, c])],
            f"{_short(prepared['neighbour_labels'][r][c])}\ncos {found.similarity[r, c]:.3f}",
            colour="red" if same else None, title_colour="red" if same else "black")
      if same:
        axis.text(0.5, 0.03, "SAME PATIENT", transform=axis.transAxes, ha="center",
                  va="bottom", fontsize=6.5, color="white", fontweight="bold",
                  bbox=dict(facecolor="red", edgecolor="none", pad=1.5))
  same_count = int(found.same_patient.sum())
  in_train = prepared["query_patients_in_train"]
  _suptitle(figure,
            f"{rows} {report.get('split')} images (QUERY #row, blue frame) and their "
            f"{columns} nearest {prepared['train_split']} images by cosine similarity of "
            f"{report.get('features')} features, most similar first (label, cosine)",
            f"red frame + SAME PATIENT: another image of the query's patient ({same_count} "
            f"shown)")
  save(figure, "neighbours.png")
  patients = ("no patient ids" if in_train is None else
              f"{in_train} of {rows} queries have their patient in the train split")
  return (f"Nearest {prepared['train_split']} neighbours (cosine similarity, "
          f"{columns} per query) of {rows} {report.get('split')} queries chosen from seed "
          f"{seed} across the classes; tiles titled with the "
          f"label and cosine; red frame = same patient ({same_count} of "
          f"{rows * columns} neighbours; {patients}). {_where(report)}.")


def _draw_embedding_map(plt, report: dict, arrays: dict, save, seed: int) -> Optional[str]:
  kept = np.flatnonzero(arrays["labels"] >= 0)
  if kept.size < 5:
    return None
  rng = np.random.default_rng(seed)
  shown = (np.sort(rng.choice(kept, MAP_MAX_POINTS, replace=False))
           if kept.size > MAP_MAX_POINTS else kept)
  coordinates, method = embedding_map(arrays["features"][shown], seed=seed)
  labels = arrays["labels"][shown]
  names = report["class_names"]
  # Ten distinct hues, then their light shades (tab20 in its own order pairs neighbouring
  # classes in two shades of one hue).
  colours = [plt.cm.tab20(i) for i in (*range(0, 20, 2), *range(1, 20, 2))]
  figure, axis = plt.subplots(figsize=(7.5, 6.2))
  for class_id, name in enumerate(names):
    members = labels == class_id
    if members.any():
      axis.scatter(coordinates[members, 0], coordinates[members, 1], alpha=0.75,
                   s=float(np.clip(4000 / shown.size, 7, 30)),  # fewer points, larger
                   color=colours[class_id % len(colours)],
                   label=f"{name} ({members.sum()})")
  axis.set_xticks([])
  axis.set_yticks([])
  axis.set_title(f"{method.split(' (')[0]} of {report.get('features')} features, "
                 f"{report.get('split')} split, coloured by class", fontsize=10)
  axis.legend(fontsize=7, markerscale=2, loc="center left", bbox_to_anchor=(1.0, 0.5),
              title=f"label mode {report.get('label_mode')}", title_fontsize=7)
  report["embedding_map_method"] = method
  save(figure, "embedding_map.png")
  return (f"2-D map of {shown.size} of the {report.get('split')} split's "
          f"{report.get('features')} features (L2-normalised, PCA to {MAP_PCA_DIMS} "
          f"dimensions, then {method}), coloured by class. {_where(report)}.")


def _draw_saliency(plt, prepared: dict, labels: np.ndarray, report: dict, save) -> str:
  """`labels`: the shown images' classes under the evaluated label mode."""
  groups, names = prepared["groups"], prepared["head_names"]
  label_names = report["class_names"]
  columns = 2 * max(groups)
  figure, axes = plt.subplots(len(groups), columns, squeeze=False,
                              figsize=(max(1.55 * columns, 6.0), 1.75 * len(groups) + 1.2))
  for axis in axes.reshape(-1):
    axis.axis("off")
  logits = prepared["logits"]
  if prepared["softmax"]:
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
  else:
    probabilities = 1 / (1 + np.exp(-logits))
  position = 0
  for r, size in enumerate(groups):
    for c in range(size):
      image, heat = prepared["inputs"][position], prepared["saliency"][position]
      predicted = int(np.argmax(logits[position]))
      label = label_names[labels[position]]
      heat = heat / max(float(np.percentile(heat, 99.5)), 1e-12)
      left, right = axes[r][2 * c], axes[r][2 * c + 1]
      left.axis("on")
      _show(left, image, f"#{int(prepared['rows'][position])} label\n{_short(label)}")
      right.axis("on")
      _show(right, image, f"pred {_short(names[predicted], 14)}\n"
                          f"p = {probabilities[position, predicted]:.2f}")
      overlay = plt.cm.jet(np.clip(heat, 0, 1))
      # The image shows through where the saliency is low (transparent below 20 %).
      overlay[..., 3] = 0.85 * np.clip((heat - 0.2) / 0.8, 0, 1)
      right.imshow(overlay, interpolation="bilinear")
      position += 1
  kind = "log-softmax" if prepared["softmax"] else "logit"
  smooth = (f"SmoothGrad: mean over {prepared['samples']} copies with noise "
            f"{prepared['noise']:g} x the value range" if prepared["samples"] > 1 else
            "one gradient")
  _suptitle(figure, f"Input-gradient saliency of the classifier head (trained on "
                    f"{prepared['head_targets']}): |d {kind}(predicted class) / d input|, "
                    f"{smooth}",
            "pairs: the network's input (label) and the saliency over it (prediction)")
  save(figure, "saliency.png")
  return (f"Input-gradient saliency of the classifier head (trained on "
          f"{prepared['head_targets']}): |d {kind} of the predicted class / d input|, "
          f"max over channels ({smooth}), clipped at its 99.5th percentile, over "
          f"{int(sum(groups))} {report.get('split')} images ({SALIENCY_PER_CLASS} per class "
          f"of the {len(groups)} most frequent classes, chosen from the seed); each pair "
          f"shows the network's input and the overlay. {_where(report)}.")


def draw(report: dict, arrays: dict, prepared: Optional[Prepared], save: Callable, *,
         seed: int = 0) -> None:
  """Draws the pictures through `save(figure, name)`; adds to `report`:
  'embedding_map_method', 'plot_captions' {file: caption} and 'pictures_not_drawn'
  {file: reason} when something was left out.

  Args:
    report: the report being written (changed in place).
    arrays: its per-example arrays ('features', 'labels' under the label mode).
    prepared: from `prepare` (None: only the embedding map, e.g. features without an
      encoder).
    save: report.write_plots' helper (captions the figure, writes it, closes it).
  """
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  captions = report.setdefault("plot_captions", {})
  notes = dict(prepared.notes) if prepared is not None else {}
  caption = _draw_embedding_map(plt, report, arrays, save, seed)
  if caption:
    captions["embedding_map.png"] = caption
  else:
    notes["embedding_map.png"] = "fewer than 5 labelled examples"
  if prepared is not None and prepared.neighbours is not None:
    captions["neighbours.png"] = _draw_neighbours(plt, prepared.neighbours, report, save,
                                                   seed)
  if prepared is not None and prepared.saliency is not None:
    captions["saliency.png"] = _draw_saliency(
        plt, prepared.saliency, arrays["labels"][prepared.saliency["rows"]], report, save)
  if notes:
    report["pictures_not_drawn"] = notes
