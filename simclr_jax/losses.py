"""NT-Xent (normalised temperature-scaled cross entropy), the SimCLR contrastive loss.

For a batch of N images with two augmented views each there are 2N anchors. Every anchor
has exactly one positive (the other view of the same image) and 2N - 2 negatives (both
views of every other image); its similarity with itself is masked out, so the softmax of
each anchor runs over 2N - 1 candidates:

  loss(a) = -log( exp(sim(a, pos(a)) / T) / sum_{c != a} exp(sim(a, c) / T) )

with sim the cosine similarity. The loss is symmetric: anchors are taken from both views.

Under `jax.pmap` with `axis_name`, each device holds n = N / devices images. The candidates
(positives and negatives) are `all_gather`ed from all devices, so every anchor sees the
same 2N - 1 candidates as on one device with the concatenated global batch, and
`lax.pmean(loss, axis_name)` equals that single-device loss.

Same-patient negatives (optional `patient_ids`, MICLe / MedAug's concern): two films of
one patient are not a pair to push apart. With patient ids given, every candidate c that
is another image of the anchor's patient (either view; anywhere in the global batch: the
ids are all_gather'ed like the projections) is removed from the anchor's denominator, as
its self-similarity is; its positive stays. With C(a) the candidates kept for anchor a:

  loss(a) = -log( exp(sim(a, pos(a)) / T) / sum_{c in C(a)} exp(sim(a, c) / T) )

Without ids (or with all ids distinct) C(a) is every candidate but a itself, the formula
above; the masked logits are exactly those of the unmasked loss, so the loss is equal
bit for bit.

Gradient of one anchor's loss with respect to its similarities s_ac = cos(z_a, z_c):
with p_ac = exp(s_ac / T) / sum_{c' in C(a)} exp(s_ac' / T) (the softmax over C(a)),

  d loss(a) / d s_ac = (p_ac - [c = pos(a)]) / T   for c in C(a),   0 otherwise,

so a removed candidate (self, or another image of the anchor's patient) receives no
gradient through that anchor: it is neither pulled nor pushed by it. It still receives
gradient as the anchor of its own row and as a candidate of other patients' anchors. The
similarity matrix then passes the gradient to the normalised projections
(d/d zhat_a and d/d zhat_c, both ends of every s_ac) and through the L2 normalisation
(d zhat / d z = (I - zhat zhat^T) / |z|). The ids and the weights are constants.

Gradients under pmap: the transpose of `all_gather` is a `psum_scatter`, so the gradient
that `jax.grad` returns on device k for its local z is d(sum_j loss_j)/dz_k, i.e.
`num_devices` times the gradient of the global (pmean'ed) loss. Taking `lax.pmean` of the
parameter gradients, as the train step does, therefore gives exactly the gradient of the
global loss with respect to the parameters. The patient mask does not change this: it is
a function of the gathered ids only (integers, no gradient).
"""
from typing import Optional

import jax
from jax import lax
import jax.numpy as jnp

# Added to squared norms so that an all-zero projection does not divide by zero
# (same role as the eps of torch.nn.functional.normalize).
_NORM_EPSILON = 1e-12


def _l2_normalize(x: jax.Array) -> jax.Array:
  squared_norm = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * lax.rsqrt(jnp.maximum(squared_norm, _NORM_EPSILON**2))


def _check_inputs(z1, z2, temperature, weights, patient_ids) -> None:
  if z1.ndim != 2 or z1.shape != z2.shape:
    raise ValueError(
        f"losses.nt_xent: z1 and z2 must both be [n, d] with the same shape; got "
        f"z1 {z1.shape} and z2 {z2.shape}.")
  if isinstance(temperature, (int, float)) and temperature <= 0:
    raise ValueError(
        f"losses.nt_xent: temperature (config.loss.temperature) must be > 0; got "
        f"{temperature}.")
  if weights is not None and weights.shape != (z1.shape[0],):
    raise ValueError(
        f"losses.nt_xent: weights must be [n] = ({z1.shape[0]},) (one per image); got "
        f"{weights.shape}.")
  if patient_ids is not None and (patient_ids.shape != (z1.shape[0],) or
                                  not jnp.issubdtype(patient_ids.dtype, jnp.integer)):
    raise ValueError(
        f"losses.nt_xent: patient_ids must be integers [n] = ({z1.shape[0]},) (one per "
        f"image); got {patient_ids.dtype} {patient_ids.shape}.")


def nt_xent_with_metrics(
    z1: jax.Array,
    z2: jax.Array,
    temperature: float = 0.07,
    axis_name: Optional[str] = None,
    weights: Optional[jax.Array] = None,
    patient_ids: Optional[jax.Array] = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """NT-Xent loss and contrastive metrics for the two views of a batch.

  Args:
    z1: [n, d] projections of view 1 of n images (any float dtype; computed in float32).
    z2: [n, d] projections of view 2 of the same n images: row i of z1 and row i of z2
      are a positive pair. Both views serve as anchors (the loss is symmetric in z1, z2).
    temperature: softmax temperature T > 0; logits are cosine similarity / T.
    axis_name: pmap axis name. When given, candidates are all_gather'ed from every
      device along this axis; all devices must hold the same n.
    weights: optional [n] non-negative per-image weights (e.g. against class imbalance).
      Image i's weight applies to both of its anchors. Without axis_name the loss is
      sum_i w_i (l_i^1 + l_i^2) / (2 sum_i w_i). With axis_name it is that sum over this
      device's anchors divided by the GLOBAL weight sum (psum) and multiplied by the
      number of devices, so that `lax.pmean(loss)` is the single-device weighted loss of
      the global batch (a device's loss alone is then not a weighted mean of its own
      anchors). Weighted images still act as negatives for everyone with full weight;
      the weights are treated as constants (no gradient). All-zero weights give 0 loss.
    patient_ids: optional [n] integer patient id of each image. When given, other images
      of an anchor's patient (both views, on any device) are not its negatives: their
      logits leave the softmax denominator like the self-similarity (see the module
      docstring); the positive pair stays. Ids are compared as they are: under JAX's
      default 32-bit mode int64 ids are truncated to int32 on the way in, so map larger
      ids to int32 first (two patients sharing an id only lose each other as negatives).

  Returns:
    (loss, metrics): loss is a float32 scalar, the (weighted) mean over this device's 2n
    anchors (see `weights` for the scaling under axis_name). metrics are unweighted
    means over this device's anchors (`lax.pmean` them for global values):
      positive_accuracy: fraction of anchors whose most similar candidate among the
        2N - 1 is their positive.
      positive_similarity: mean cosine similarity of the positive pairs.
      negative_similarity: mean cosine similarity of an anchor with its negatives
        (2N - 2, fewer with patient_ids).
  """
  patient_ids = None if patient_ids is None else jnp.asarray(patient_ids)
  _check_inputs(z1, z2, temperature, weights, patient_ids)
  n = z1.shape[0]
  z1 = _l2_normalize(z1.astype(jnp.float32))
  z2 = _l2_normalize(z2.astype(jnp.float32))
  anchors = jnp.concatenate([z1, z2], axis=0)  # [2n, d]: view 1 rows, then view 2 rows

  if axis_name is None:
    device_offset = 0
    z1_global, z2_global = z1, z2
  else:
    device_offset = lax.axis_index(axis_name) * n
    z1_global = lax.all_gather(z1, axis_name, tiled=True)  # [N, d]
    z2_global = lax.all_gather(z2, axis_name, tiled=True)  # [N, d]
  global_n = z1_global.shape[0]
  candidates = jnp.concatenate([z1_global, z2_global], axis=0)  # [2N, d]

  # HIGHEST precision: with T = 0.07 a TF32/bf16 matmul (GPU/TPU default) would put
  # ~1e-2 errors into the logits; this matmul is tiny next to the encoder.
  similarity = jnp.matmul(anchors, candidates.T, precision=lax.Precision.HIGHEST)  # [2n, 2N]

  # Anchor row r = view * n + i is the global example device_offset + i. Its own column
  # is view * N + device_offset + i; its positive is the same example in the other view.
  local_index = jnp.arange(n)
  self_column = jnp.concatenate(
      [local_index, global_n + local_index]) + device_offset  # [2n]
  positive_column = jnp.concatenate(
      [global_n + local_index, local_index]) + device_offset  # [2n]
  columns = jnp.arange(2 * global_n)[None, :]
  is_self = columns == self_column[:, None]  # [2n, 2N]
  is_positive = columns == positive_column[:, None]  # [2n, 2N]

  is_removed = is_self  # [2n, 2N]: candidates left out of an anchor's denominator
  if patient_ids is not None:
    global_ids = (patient_ids if axis_name is None else
                  lax.all_gather(patient_ids, axis_name, tiled=True))  # [N]
    anchor_ids = jnp.concatenate([patient_ids, patient_ids])  # [2n]
    candidate_ids = jnp.concatenate([global_ids, global_ids])  # [2N]
    same_patient = anchor_ids[:, None] == candidate_ids[None, :]  # [2n, 2N]
    is_removed = is_self | (same_patient & ~is_positive)

  logits = jnp.where(is_removed, -jnp.inf, similarity / temperature)
  positive_logit = jnp.sum(jnp.where(is_positive, logits, 0.0), axis=1)  # [2n]
  per_anchor_loss = jax.nn.logsumexp(logits, axis=1) - positive_logit  # [2n]

  if weights is None:
    loss = jnp.mean(per_anchor_loss)
  else:
    weights = lax.stop_gradient(weights.astype(jnp.float32))
    anchor_weights = jnp.concatenate([weights, weights])  # [2n]
    weight_sum = jnp.sum(weights)
    num_devices = 1
    if axis_name is not None:
      weight_sum = lax.psum(weight_sum, axis_name)
      num_devices = lax.psum(1, axis_name)
    weight_sum = jnp.maximum(weight_sum, jnp.finfo(jnp.float32).tiny)
    loss = num_devices * jnp.sum(anchor_weights * per_anchor_loss) / (2.0 * weight_sum)

  similarity = lax.stop_gradient(similarity)
  is_negative = ~(is_removed | is_positive)
  num_negatives = jnp.maximum(jnp.sum(is_negative, axis=1), 1)  # [2n]; 2N - 2 unmasked
  metrics = {
      "positive_accuracy": jnp.mean(
          (jnp.argmax(logits, axis=1) == positive_column).astype(jnp.float32)),
      "positive_similarity": jnp.mean(
          jnp.sum(jnp.where(is_positive, similarity, 0.0), axis=1)),
      "negative_similarity": jnp.mean(
          jnp.sum(jnp.where(is_negative, similarity, 0.0), axis=1) / num_negatives),
  }
  return loss, metrics


def nt_xent(
    z1: jax.Array,
    z2: jax.Array,
    temperature: float = 0.07,
    axis_name: Optional[str] = None,
    weights: Optional[jax.Array] = None,
    patient_ids: Optional[jax.Array] = None,
) -> jax.Array:
  """NT-Xent loss of the two views of a batch; see `nt_xent_with_metrics`.

  Args:
    z1: [n, d] projections of view 1 of n images.
    z2: [n, d] projections of view 2 of the same images (row i of z1 and z2 are positives).
    temperature: softmax temperature T > 0.
    axis_name: pmap axis name; candidates are then gathered from all devices and
      `lax.pmean(loss, axis_name)` equals the loss of the concatenated global batch.
    weights: optional [n] per-image weights (see `nt_xent_with_metrics`).
    patient_ids: optional [n] integer patient ids: other images of an anchor's patient
      are not its negatives (see `nt_xent_with_metrics`).

  Returns:
    float32 scalar loss, the mean over this device's 2n anchors.
  """
  loss, _ = nt_xent_with_metrics(z1, z2, temperature, axis_name, weights, patient_ids)
  return loss
