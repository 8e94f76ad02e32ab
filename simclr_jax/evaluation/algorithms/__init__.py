"""Evaluation maths for frozen representations: clustering, kNN, linear probe (was metrics.py).

Pure functions over numpy/JAX arrays; no file or dataset access (that lives in
`simclr_jax/evaluation/`). The headline metric of the system this project replaces is
the *clustering accuracy* of k-means (k = 14) on encoder features, which is computed
here as:

  1. `kmeans` (JAX, on the default device): k-means++ seeding, jitted Lloyd iterations,
     `n_init` restarts from one fixed seed, lowest inertia wins. scikit-learn's `KMeans`
     is the reference it is tested against.
  2. `clustering_accuracy`: the best one-to-one matching of clusters to classes
     (Hungarian algorithm, `scipy.optimize.linear_sum_assignment`, on the
     cluster x class contingency matrix); the fraction of examples whose class is the
     class matched to their cluster. With more clusters than classes the unmatched
     clusters count as wrong; with fewer, the unmatched classes do.

Representation-quality companions: NMI and ARI (scikit-learn), purity (many-to-one
matching), cosine kNN (votes on the device), a logistic-regression linear probe (L-BFGS on
the device, scikit-learn's objective; scikit-learn itself is the reference and an
option), label-efficiency subsampling by patient, the mean cosine similarity within
vs between classes, and the patient shortcut (nearest neighbour of the same patient).
Every AUROC goes through `auroc_table` (one rule for which classes enter a macro) with
95 % intervals from `patient_resamples` (resampling patients).

The evaluators in `simclr_jax/evaluation/` decide which of these run on which examples;
this module holds only the maths, so the offline evaluator, the online monitor and the
benchmarks share it.
"""
from simclr_jax.evaluation.algorithms.kmeans import KMeansResult
from simclr_jax.evaluation.algorithms.kmeans import kmeans
from simclr_jax.evaluation.algorithms.logistic import LOSS_KINDS
from simclr_jax.evaluation.algorithms.logistic import LogisticRegression
from simclr_jax.evaluation.algorithms.logistic import PROBE_SOLVERS
from simclr_jax.evaluation.algorithms.logistic import fit_logistic_regression
from simclr_jax.evaluation.algorithms.logistic import label_efficiency
from simclr_jax.evaluation.algorithms.logistic import linear_probe
from simclr_jax.evaluation.algorithms.neighbours import feature_quality
from simclr_jax.evaluation.algorithms.neighbours import knn_accuracy
from simclr_jax.evaluation.algorithms.neighbours import knn_label_scores
from simclr_jax.evaluation.algorithms.neighbours import knn_neighbours
from simclr_jax.evaluation.algorithms.neighbours import knn_predict
from simclr_jax.evaluation.algorithms.neighbours import knn_votes
from simclr_jax.evaluation.algorithms.neighbours import l2_normalise
from simclr_jax.evaluation.algorithms.neighbours import patient_shortcut
from simclr_jax.evaluation.algorithms.scores import BOOTSTRAP_RESAMPLES
from simclr_jax.evaluation.algorithms.scores import BOOTSTRAP_SEED
from simclr_jax.evaluation.algorithms.scores import auroc_or_nan
from simclr_jax.evaluation.algorithms.scores import auroc_table
from simclr_jax.evaluation.algorithms.scores import bootstrap_mean_interval
from simclr_jax.evaluation.algorithms.scores import clustering_accuracy
from simclr_jax.evaluation.algorithms.scores import clustering_scores
from simclr_jax.evaluation.algorithms.scores import contingency_matrix
from simclr_jax.evaluation.algorithms.scores import hungarian_matching
from simclr_jax.evaluation.algorithms.scores import nan_mean
from simclr_jax.evaluation.algorithms.scores import patient_resamples
from simclr_jax.evaluation.algorithms.scores import percentile_interval
from simclr_jax.evaluation.algorithms.scores import purity
from simclr_jax.evaluation.algorithms.scores import weighted_auroc
