"""`config.init_from`: where a run's encoder starts (the head is always new).

  ''             random initialisation
  FILE           a torchvision ResNet state_dict (ImageNet): `convert.load_torch_weights`
  WORKDIR        the newest complete checkpoint of a run of this project whose objective
                 has an encoder (SimCLR, supervised)
  WORKDIR@STEP   that run's checkpoint STEP

`resolve(config, workdir)` checks the source before anything is compiled or written and
records it in `config.init_source` (kind, absolute path, step, sha256 of the source's
config.json or of the weights file, its objective), so config.json and every report of the
run say where the encoder came from. A resumed run keeps the source its config.json
records: a WORKDIR that trained further meanwhile is not read again (the run's own
checkpoint holds the weights). `encoder_variables(config, ...)` reads the recorded source:
the encoder's params AND batch_stats, through `checkpointing.load_for_eval` (read-only,
complete checkpoints only, safe on a live run).

Every refusal is a ConfigError naming config.init_from: an architecture mismatch (model,
width, stem, input channels: the field and both values), a run without a complete
checkpoint (none yet, or only one still being written), an unknown @STEP, a damaged
checkpoint, a source whose objective has no encoder.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import Any, Optional, Tuple

import flax
import ml_collections
import numpy as np

from simclr_jax import checkpointing
from simclr_jax import config as config_lib
from simclr_jax.errors import ConfigError
from simclr_jax.errors import one_line
from simclr_jax.workdir import CONFIG_FILE

# The config fields that decide the encoder's parameter shapes (and its input: one grey
# channel in this project).
ARCHITECTURE_FIELDS = ("model", "width", "stem")
INPUT_CHANNELS = 1


def parse(value: str) -> Tuple[str, Optional[int]]:
  """'PATH' -> (PATH, None); 'PATH@STEP' -> (PATH, STEP) when STEP is an integer."""
  path, separator, step = str(value).rpartition("@")
  if separator and step.isdigit() and path:
    return path, int(step)
  return str(value), None


def _sha256_of_file(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as file:
    for block in iter(lambda: file.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def _recorded_source(config: ml_collections.ConfigDict, workdir: Optional[str]
                     ) -> Optional[dict]:
  """The source a workdir's config.json records for the same init_from, when the workdir
  holds a complete checkpoint (a resume); else None."""
  if not workdir or not checkpointing.complete_steps(workdir):
    return None
  try:
    stored = checkpointing.read_config(workdir)
  except (FileNotFoundError, ValueError):
    return None   # the resume check reports a broken config.json
  source = stored.get("init_source") or {}
  if stored.get("init_from") != config.init_from or not source.get("kind"):
    return None
  return source.to_dict() if hasattr(source, "to_dict") else dict(source)


def _error(value: str, text: str) -> ConfigError:
  return ConfigError(f"config.init_from={value!r}: {text}")


def _input_channels(workdir: str, step: int, value: str) -> int:
  """In-channels of the source encoder's first convolution, from the checkpoint's
  metadata (no array is read)."""
  import orbax.checkpoint as ocp
  directory = checkpointing.checkpoint_directory(workdir) / str(step) / "state"
  try:
    metadata = ocp.StandardCheckpointHandler().metadata(directory)
    tree = getattr(metadata, "item_metadata", None) or metadata
    kernel = tree["params"]["encoder"]["conv_init"]["kernel"]
    return int(kernel.shape[2])
  except Exception as error:  # pylint: disable=broad-except  (orbax, tensorstore, KeyError)
    raise _error(value, f"checkpoint {step} in {directory.parent.parent} cannot be read "
                        f"({one_line(error)[:200]}); give another step or run.") from None


def _resolve_workdir(value: str, path: str, step: Optional[int],
                     config: ml_collections.ConfigDict) -> dict:
  from simclr_jax import objectives
  try:
    source = checkpointing.read_config(path)
  except (FileNotFoundError, ValueError) as error:
    raise _error(value, one_line(error)) from None
  objective = str(source.get("objective", "simclr"))
  try:
    record = objectives.get(objective)
  except ValueError:
    raise _error(value, f"the run's objective {objective!r} (in {path}/{CONFIG_FILE}) is "
                        f"not one this version knows ({', '.join(objectives.OBJECTIVES)}); "
                        f"its encoder cannot be read.") from None
  if not record.has_encoder:
    with_encoder = [name for name, other in objectives.OBJECTIVES.items() if other.has_encoder]
    raise _error(value, f"the run's objective {objective!r} has no encoder to copy; give a "
                        f"run of {', '.join(map(repr, with_encoder))}.")
  defaults = config_lib.default_config()
  for field in ARCHITECTURE_FIELDS:
    theirs, ours = source.get(field, defaults[field]), config[field]
    if theirs != ours:
      raise _error(value, f"{field} differs: the source run has {field}={theirs!r}, this run "
                          f"{field}={ours!r}; use --config.{field}={theirs!r} or another run.")
  steps = checkpointing.complete_steps(path)
  directory = checkpointing.checkpoint_directory(path)
  if not steps:
    writing = checkpointing.incomplete_checkpoints(path)
    raise _error(value, f"no complete checkpoint in {directory}"
                        + (f" (only {', '.join(writing)}, still being written or never "
                           f"finished)" if writing else "")
                        + "; wait for the run's first checkpoint or give another run.")
  if step is not None and step not in steps:
    raise _error(value, f"step {step} is not a complete checkpoint in {directory}; "
                        f"available steps: {steps}.")
  chosen = steps[-1] if step is None else step
  channels = _input_channels(path, chosen, value)
  if channels != INPUT_CHANNELS:
    raise _error(value, f"input channels differ: the source encoder's first convolution "
                        f"takes {channels} channels, this run {INPUT_CHANNELS} (grey images).")
  with open(os.path.join(path, CONFIG_FILE), "rb") as file:
    config_sha256 = hashlib.sha256(file.read()).hexdigest()
  return {"kind": "workdir", "path": os.path.abspath(path), "step": int(chosen),
          "sha256": config_sha256, "objective": objective}


def resolve(config: ml_collections.ConfigDict, workdir: Optional[str] = None
            ) -> ml_collections.ConfigDict:
  """A copy of `config` with `init_source` recorded from `init_from` (reads, never writes).

  Args:
    config: the experiment config (not changed).
    workdir: the run's own directory; when it holds a complete checkpoint and its
      config.json records a source for the same init_from, that record is kept (a resume
      never re-reads a source that moved on).

  Raises:
    ConfigError: one line naming config.init_from (see the module docstring).
  """
  config = config_lib.with_defaults(config) if "init_source" not in config else (
      config.copy_and_resolve_references())
  value = str(config.init_from or "")
  if not value:
    return config
  source = _recorded_source(config, workdir)
  if source is not None:
    logging.info("Resuming: the encoder source stays the one config.json records (%s, "
                 "step %s); it is not read again.", source.get("path"), source.get("step"))
  else:
    path, step = parse(value)
    path = os.path.expanduser(path)
    if os.path.isdir(path):
      source = _resolve_workdir(value, path, step, config)
    elif os.path.isfile(path) and step is None:
      for field, theirs in (("width", 1.0), ("stem", "imagenet")):   # torchvision's ResNets
        if config[field] != theirs:
          raise _error(value, f"{field} differs: torchvision weights have {field}={theirs!r}, "
                              f"this run {field}={config[field]!r}; use --config.{field}="
                              f"{theirs!r} or start from a run of this project.")
      source = {"kind": "torchvision", "path": os.path.abspath(path), "step": -1,
                "sha256": _sha256_of_file(path), "objective": ""}
    else:
      raise _error(value, "no such run directory or weights file; give a torchvision "
                          "state_dict FILE, a run directory WORKDIR (its newest complete "
                          "checkpoint) or WORKDIR@STEP.")
  for name, field_value in source.items():
    if name in config.init_source:
      config.init_source[name] = field_value
  return config


def describe(config: ml_collections.ConfigDict) -> str:
  """'' or e.g. 'runs/simclr@450 (simclr, config.json sha256 1a2b3c4d...)'."""
  source = (config.get("init_source") or {})
  kind = source.get("kind", "")
  if kind == "workdir":
    return (f"{source['path']}@{source['step']} ({source.get('objective')} run, config.json "
            f"sha256 {str(source.get('sha256'))[:12]})")
  if kind == "torchvision":
    return (f"torchvision weights {source['path']} (sha256 "
            f"{str(source.get('sha256'))[:12]})")
  return ""


def _shapes(tree: Any) -> dict:
  return {key: tuple(np.shape(value)) for key, value in
          flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()}


def encoder_variables(config: ml_collections.ConfigDict, expected: dict) -> dict:
  """The source encoder's {'params', 'batch_stats'} (host numpy), checked against the
  shapes of this run's freshly initialised encoder `expected` (same structure).

  Raises:
    ConfigError: the source cannot be read (damaged, deleted) or holds another network.
  """
  if not config.init_source.kind:   # a caller that skipped settings.check_run
    config = resolve(config)
  source, value = config.init_source, config.init_from
  if source.kind == "torchvision":
    from simclr_jax import convert  # torch is imported lazily there
    try:
      variables = convert.load_torch_weights(source.path, config)
    except (OSError, ValueError) as error:
      raise _error(value, one_line(error)) from None
  else:
    try:
      _, whole, _ = checkpointing.load_for_eval(source.path, int(source.step))
    except (FileNotFoundError, ValueError) as error:
      raise _error(value, one_line(error)) from None
    variables = {"params": whole["params"]["encoder"],
                 "batch_stats": whole.get("batch_stats", {}).get("encoder", {})}
  found, wanted = _shapes(variables), _shapes(expected)
  if found != wanted:
    differing = sorted(set(found) ^ set(wanted)) or sorted(
        key for key in wanted if wanted[key] != found[key])
    key = differing[0]
    detail = (f"{'/'.join(key)} has shape {found[key]} in the source but {wanted[key]} here"
              if key in found and key in wanted else
              f"{'/'.join(key)} is {'only in the source' if key in found else 'missing from the source'}")
    raise _error(value, f"the source encoder is not this run's network: {detail} "
                        f"({len(differing)} array(s) differ).")
  logging.info("Initialised the encoder (params and batch statistics) from %s",
               describe(config) or value)
  return variables


def summary(config: ml_collections.ConfigDict) -> Optional[dict]:
  """{kind, path, step, sha256, objective} of the recorded source; None without one."""
  source = config.get("init_source") or {}
  if not source.get("kind"):
    return None
  source = source.to_dict() if hasattr(source, "to_dict") else dict(source)
  return json.loads(json.dumps(source))
