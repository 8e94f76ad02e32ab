"""Multi-device tests as ordinary test functions, on 4 fake CPU devices.

JAX fixes the number of CPU devices when it starts its backend, so this package runs as its
own pytest invocation (`./launch.sh test` runs `pytest tests`, which leaves this package
out, then `pytest tests/multidevice`), and the device count is set here, before anything
imports jax. A test that needs fewer devices passes `jax.devices()[:n]` to pmap.
"""
import os

NUM_DEVICES = 4
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = " ".join(filter(None, (
    os.environ.get("XLA_FLAGS"), f"--xla_force_host_platform_device_count={NUM_DEVICES}")))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.fixture(autouse=True, scope="session")
def four_devices():
  if jax.local_device_count() != NUM_DEVICES:
    pytest.exit(f"tests/multidevice needs {NUM_DEVICES} CPU devices but JAX started with "
                f"{jax.local_device_count()}: run it as its own pytest invocation "
                "(pytest tests/multidevice), before anything else starts JAX.", returncode=2)


def update_differences(initial, one, four) -> tuple:
  """A step run on 1 and on 4 devices from the train state `initial`: the largest
  difference between the two results' params and batch_stats, relative to each leaf's
  scale (float32 summation order differs between the splits), and the largest change of
  any parameter from `initial` (so "equal" cannot mean "nothing moved")."""
  leaves1 = jax.tree_util.tree_leaves((one.params, one.batch_stats))
  leaves4 = jax.tree_util.tree_leaves((four.params, four.batch_stats))
  max_diff = max(float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(a)))))
                 for a, b in zip(leaves1, leaves4))
  moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(
      jax.tree_util.tree_leaves(initial.params), jax.tree_util.tree_leaves(one.params)))
  return max_diff, moved
