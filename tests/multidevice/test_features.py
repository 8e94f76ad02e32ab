"""Frozen-feature extraction over several devices counts every example once, in order."""
import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax.evaluation import features as features_lib


def _encode(variables, images):  # features = (pixel, 2 * pixel) * scale
  pixel = images[:, 0, 0, :].astype(jnp.float32)
  return jnp.concatenate([pixel, 2 * pixel], axis=-1) * variables["scale"]


def test_masked_extraction_counts_every_example_once_in_order():
  devices = jax.local_devices()[:3]   # batches of 8 and 5 rows: not multiples of 3
  num_examples, batch_size = 23, 8    # 3 batches; the last one has 7 real rows + 1 padding

  def batches():
    for start in range(0, num_examples, batch_size):
      ids = np.arange(start, start + batch_size)
      mask = ids < num_examples
      images = np.where(mask[:, None, None, None], ids[:, None, None, None] + 1, 0)
      yield {"image": np.broadcast_to(images, (batch_size, 2, 2, 1)).astype(np.uint8),
             "mask": mask, "id": np.where(mask, ids, -7)}

  out = features_lib.extract_features(_encode, {"scale": jnp.float32(1.0)}, batches(),
                                      devices=devices)
  # A batch whose size is not a multiple of the 3 devices and that has no padding.
  out2 = features_lib.extract_features(_encode, {"scale": jnp.float32(1.0)}, iter([
      {"image": np.arange(1, 6, dtype=np.uint8).reshape(5, 1, 1, 1).repeat(2, 1).repeat(2, 2),
       "mask": np.ones(5, bool)}]), devices=devices)
  assert len(devices) == 3
  assert out["id"].tolist() == list(range(23))
  assert [row[0] for row in out["features"].tolist()] == [i + 1.0 for i in range(23)]
  assert [row[1] for row in out["features"].tolist()] == [2.0 * (i + 1) for i in range(23)]
  assert out2["features"][:, 0].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
