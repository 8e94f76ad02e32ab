"""Multi-process start-up through JAX's own runtime (`jax.distributed.initialize`).

One code path for every cluster:
  * one process (laptop, one GPU box): nothing to do;
  * SLURM with more than one task (`srun`, one task per node): JAX reads the SLURM
    variables itself;
  * Cloud TPU pod slices: JAX's TPU cluster detection;
  * anything else: an explicit coordinator, from flags or the environment variables
    SIMCLR_COORDINATOR_ADDRESS / SIMCLR_NUM_PROCESSES / SIMCLR_PROCESS_ID.

On CPU (tests, laptops) several processes exchange collectives through gloo.
"""
import logging
import os
from typing import Optional

import jax

# The absl FlagValues holding --coordinator_address etc. (`define_flags`), read by
# `detect_launch`; None until a command line defines them.
_flag_values = None


def define_flags(flag_values=None) -> None:
  """--coordinator_address / --num_processes / --process_id on `flag_values` (default
  absl's global FLAGS), once per FlagValues; `initialize` then reads them."""
  global _flag_values
  from absl import flags
  flag_values = flags.FLAGS if flag_values is None else flag_values
  if "coordinator_address" not in flag_values:
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (explicit "
                        "multi-process launch; SLURM and TPU pods are detected).",
                        flag_values=flag_values)
    flags.DEFINE_integer("num_processes", None, "Total number of processes.",
                         flag_values=flag_values)
    flags.DEFINE_integer("process_id", None, "This process's index in [0, num_processes).",
                         flag_values=flag_values)
  _flag_values = flag_values


def _flag(name: str):
  if _flag_values is None or name not in _flag_values:
    return None
  return _flag_values[name].value


def _int_or_none(value) -> Optional[int]:
  return None if value in (None, "") else int(value)


def detect_launch() -> Optional[dict]:
  """Keyword arguments for jax.distributed.initialize, or None for one process.

  Explicit settings (flags, then SIMCLR_* variables) win over auto-detection.
  """
  coordinator = _flag("coordinator_address") or os.environ.get("SIMCLR_COORDINATOR_ADDRESS")
  num_processes = _int_or_none(_flag("num_processes") or
                               os.environ.get("SIMCLR_NUM_PROCESSES"))
  process_id = _flag("process_id")
  if process_id is None:
    process_id = _int_or_none(os.environ.get("SIMCLR_PROCESS_ID"))
  if coordinator or (num_processes or 1) > 1:
    missing = [name for name, value in (("coordinator_address", coordinator),
                                        ("num_processes", num_processes),
                                        ("process_id", process_id)) if value is None]
    if missing:
      raise ValueError(
          f"Explicit multi-process launch needs all of coordinator_address, num_processes "
          f"and process_id; missing: {', '.join(missing)} (flags or SIMCLR_* variables).")
    if not 0 <= process_id < num_processes:
      raise ValueError(f"process_id={process_id} is outside [0, {num_processes}).")
    return {"coordinator_address": coordinator, "num_processes": num_processes,
            "process_id": process_id}
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1:
    # JAX's SlurmCluster fills in coordinator, process count and id. It would also pin
    # each process to the one GPU numbered SLURM_LOCALID (one task per GPU); with one
    # task per node (our sbatch script) the process must keep all the node's GPUs.
    kwargs = {}
    gpus_on_node = _int_or_none(os.environ.get("SLURM_GPUS_ON_NODE"))
    tasks_per_node = _int_or_none(os.environ.get("SLURM_NTASKS_PER_NODE", "").split("(")[0])
    if (tasks_per_node == 1 and gpus_on_node and gpus_on_node > 1 and
        not os.environ.get("JAX_LOCAL_DEVICE_IDS")):
      kwargs["local_device_ids"] = list(range(gpus_on_node))
    return kwargs
  if os.environ.get("SIMCLR_TPU_POD") == "1" or len(
      os.environ.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1:
    # Multi-host Cloud TPU slice (`./launch.sh tpu` sets SIMCLR_TPU_POD=1): JAX finds the
    # workers from the TPU metadata; initialising also starts the preemption service.
    return {}
  return None


def initialize() -> bool:
  """Starts the multi-controller runtime when this is a multi-process launch.

  Returns:
    True when jax.distributed was initialised (more than one process).
  """
  kwargs = detect_launch()
  if kwargs is None:
    return False
  # Collectives between CPU devices of different processes (tests, CPU clusters); GPUs
  # and TPUs use their own interconnect regardless.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  # Lets all processes agree on a step to checkpoint at when one receives SIGTERM.
  jax.config.update("jax_enable_preemption_service", True)
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  return True
