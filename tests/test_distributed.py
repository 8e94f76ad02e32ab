"""Launch detection (no processes started): what jax.distributed.initialize is given."""
import pytest

from simclr_jax.runtime import distributed

_LAUNCH_VARIABLES = ("SIMCLR_COORDINATOR_ADDRESS", "SIMCLR_NUM_PROCESSES", "SIMCLR_PROCESS_ID",
                     "SLURM_NTASKS", "SLURM_NTASKS_PER_NODE", "SLURM_GPUS_ON_NODE",
                     "JAX_LOCAL_DEVICE_IDS", "SIMCLR_TPU_POD", "TPU_WORKER_HOSTNAMES")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
  for name in _LAUNCH_VARIABLES:
    monkeypatch.delenv(name, raising=False)


def test_single_process_does_nothing():
  assert distributed.detect_launch() is None


def test_explicit_coordinator_from_environment(monkeypatch):
  monkeypatch.setenv("SIMCLR_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("SIMCLR_NUM_PROCESSES", "4")
  monkeypatch.setenv("SIMCLR_PROCESS_ID", "3")
  assert distributed.detect_launch() == {"coordinator_address": "10.0.0.1:1234",
                                         "num_processes": 4, "process_id": 3}


def test_explicit_launch_names_what_is_missing(monkeypatch):
  monkeypatch.setenv("SIMCLR_COORDINATOR_ADDRESS", "10.0.0.1:1234")
  monkeypatch.setenv("SIMCLR_NUM_PROCESSES", "2")
  with pytest.raises(ValueError, match="missing: process_id"):
    distributed.detect_launch()
  monkeypatch.setenv("SIMCLR_PROCESS_ID", "2")
  with pytest.raises(ValueError, match=r"process_id=2 is outside \[0, 2\)"):
    distributed.detect_launch()


def test_slurm_one_task_per_node_keeps_every_gpu(monkeypatch):
  monkeypatch.setenv("SLURM_NTASKS", "2")
  monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "1")
  monkeypatch.setenv("SLURM_GPUS_ON_NODE", "8")
  # JAX alone would pin the task to GPU SLURM_LOCALID (= 0): one GPU of eight.
  assert distributed.detect_launch() == {"local_device_ids": list(range(8))}
  monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "8")   # one task per GPU: JAX's default
  assert distributed.detect_launch() == {}


def test_tpu_pod(monkeypatch):
  monkeypatch.setenv("SIMCLR_TPU_POD", "1")
  assert distributed.detect_launch() == {}
