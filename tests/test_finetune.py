"""Fewer labels, measured (issue 17): init_from a workdir, patient-wise label fractions, the
frozen / full fine-tuning modes, selection on validation and experiments.label_efficiency.

In-process (training.loop.train_and_evaluate), resnet_tiny at 16 px on the session's
synthetic_cxr/32, 2-3 steps. The encoder to start from is a SUPERVISED run of the scratch
row's own settings (init_from takes SimCLR and supervised runs alike, through the same
params['encoder']): its train step and initialisation are then the ones the fine-tuning
runs compile anyway, served by the session's compilation cache (a SimCLR source would add
two compilations, ~25 s on 2 cores), and its classifier, which must NOT be copied, makes
"the head is new" a real check.
"""
import dataclasses
import hashlib
import json
import os
import shutil

import jax
import numpy as np
import pytest

from simclr_jax import checkpointing
from simclr_jax import data
from simclr_jax import errors
from simclr_jax import objectives
from simclr_jax.config import default_config
from simclr_jax.data import pipeline
from simclr_jax.data import registry
from simclr_jax.data import train_subset
from simclr_jax.training import init_from as init_from_lib
from simclr_jax.training import loop
from simclr_jax.training import optim
from simclr_jax.training import settings
from simclr_jax.training import step as step_lib
from simclr_jax.workdir import BEST_CHECKPOINT_FILE
from simclr_jax.workdir import CONFIG_FILE


def _config(data_dir, objective="supervised", **overrides):
  """resnet_tiny at 16 px, batch 8, 2 steps; jitter and blur off (smaller programs)."""
  config = default_config()
  config.objective = objective
  config.dataset, config.data_dir = "synthetic_cxr/32", str(data_dir)
  config.model, config.width, config.stem = "resnet_tiny", 0.125, "cifar"
  config.image_size, config.batch_size = 16, 8
  config.head.hidden_dim, config.head.output_dim = 16, 8
  config.augment.jitter_prob = config.augment.blur_prob = 0.0
  config.num_train_steps, config.optimizer.warmup_steps = 2, 0
  config.eval_every_steps, config.async_checkpointing = 0, False
  config.progress_bar, config.compilation_cache = False, True
  config.checkpoint_every_steps, config.keep_checkpoints = 1, 3
  config.update_from_flattened_dict(overrides)
  return config


def _tree_equal(a, b) -> bool:
  same = jax.tree_util.tree_map(lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)
  return jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b) and all(
      jax.tree_util.tree_leaves(same))


@pytest.fixture(scope="module")
def source(synthetic_data_dir, tmp_path_factory):
  """A supervised run of 2 steps, checkpoints at steps 1 and 2: the encoder to start from."""
  workdir = str(tmp_path_factory.mktemp("finetune") / "source")
  loop.train_and_evaluate(_config(synthetic_data_dir), workdir)
  assert checkpointing.complete_steps(workdir) == [1, 2]
  return workdir


def _copy(workdir, target):
  shutil.copytree(workdir, target)
  return str(target)


# ------------------------------------------------------------------ the training subset

def test_subset_is_patient_wise_deterministic_and_the_same_for_every_init(
    synthetic_data_dir, source):
  fine_tune = {"supervised.label_fraction": 0.25, "supervised.subset_seed": 3}
  scratch = settings.check_run(_config(synthetic_data_dir, **fine_tune))
  pretrained = settings.check_run(_config(synthetic_data_dir, init_from=source, **fine_tune))
  assert scratch.config.supervised.subset == pretrained.config.supervised.subset
  record = scratch.config.supervised.subset
  subset = train_subset.of_config(scratch.config)
  train_subset.select.cache_clear()   # deterministic, not only cached
  again = train_subset.of_config(scratch.config)
  np.testing.assert_array_equal(subset.indices, again.indices)
  assert again.ids_sha256 == record.ids_sha256 and record.num_images == subset.indices.size
  other_seed = train_subset.of_config(_config(synthetic_data_dir, **dict(
      fine_tune, **{"supervised.subset_seed": 4})))
  assert other_seed.ids_sha256 != record.ids_sha256
  # Whole patients of the train split only, none of validation or test; every class kept.
  columns = {split: pipeline.split_columns("synthetic_cxr/32", str(synthetic_data_dir), split,
                                           ("patient_id", "label"))
             for split in ("train", "validation", "test")}
  train_patients = columns["train"]["patient_id"]
  chosen = set(train_patients[subset.indices].tolist())
  assert len(chosen) == record.num_patients
  assert set(np.flatnonzero(np.isin(train_patients, list(chosen)))) == set(subset.indices)
  for split in ("validation", "test"):
    assert not chosen & set(columns[split]["patient_id"].tolist())
  assert min(record.positives) >= 1 and record.classes_without_positives == ()
  assert 0.2 < record.num_images / train_patients.size < 0.4
  # Epochs are epochs of the subset.
  assert scratch.steps_per_epoch == max(1, record.num_images // 8)
  # The training stream draws only subset records; a label mode's class is the target.
  config = _config(synthetic_data_dir, **dict(fine_tune, **{
      "supervised.label_mode": "binary:normal"}))
  binary = train_subset.of_config(config)
  assert binary.class_names == ("not normal", "normal") and binary.ids_sha256 == record.ids_sha256
  source_images = data.data_source("synthetic_cxr/32", str(synthetic_data_dir), "train")
  index_of = {np.asarray(source_images[i]["image"]).tobytes(): i
              for i in range(len(source_images))}
  iterator = data.create_train_iterator(config)
  drawn = []
  for _ in range(6):
    batch = next(iterator)
    for image, label in zip(batch["image"].reshape(-1, 32, 32, 1), batch["label"].reshape(-1)):
      index = index_of[image.tobytes()]
      drawn.append(index)
      assert label == (columns["train"]["label"][index] == 0)   # class 0 is 'normal'
  iterator.close()
  assert set(drawn) <= set(subset.indices.tolist())
  assert settings.check_run(config).config.supervised.num_classes == 2


# ------------------------------------------------------------------------- init_from

def test_init_from_copies_exactly_the_encoder_and_records_the_source(synthetic_data_dir,
                                                                     source):
  plan = settings.check_run(_config(synthetic_data_dir, init_from=source))
  recorded = plan.config.init_source
  with open(os.path.join(source, CONFIG_FILE), "rb") as file:
    sha256 = hashlib.sha256(file.read()).hexdigest()
  assert (recorded.kind, recorded.path, recorded.step, recorded.sha256, recorded.objective) == (
      "workdir", os.path.abspath(source), 2, sha256, "supervised")
  assert settings.check_run(_config(synthetic_data_dir, init_from=f"{source}@1")
                            ).config.init_source.step == 1
  config = plan.config
  model = objectives.of(config).build_model(config, None)
  tx, _ = optim.create_optimizer(config, 2, 12)
  rng = jax.random.PRNGKey(0)
  state = step_lib.create_train_state(config, model, tx, rng, (16, 16, 1))
  scratch = step_lib.create_train_state(_without_init(config), model, tx, rng, (16, 16, 1))
  _, source_variables, _ = checkpointing.load_for_eval(source, 2)
  assert _tree_equal(state.params["encoder"], source_variables["params"]["encoder"])
  assert _tree_equal(state.batch_stats["encoder"], source_variables["batch_stats"]["encoder"])
  assert not _tree_equal(state.params["encoder"], scratch.params["encoder"])
  assert _tree_equal(state.params["classifier"], scratch.params["classifier"])   # new head,
  assert not _tree_equal(state.params["classifier"],                              # not the
                         source_variables["params"]["classifier"])                # source's
  assert set(state.params) == {"encoder", "classifier"}


def _without_init(config):
  config = config.copy_and_resolve_references()
  config.init_from = ""
  return config


# ------------------------------------------------------------------------ bad input

def _damaged(source, tmp_path):
  workdir = _copy(source, tmp_path / "damaged")
  (checkpointing.checkpoint_directory(workdir) / "2" / "state" / "_METADATA").write_text("{")
  shutil.rmtree(checkpointing.checkpoint_directory(workdir) / "1")
  return workdir


def _writing(source, tmp_path):
  workdir = _copy(source, tmp_path / "writing")
  directory = checkpointing.checkpoint_directory(workdir)
  for step in ("1", "2"):
    os.rename(directory / step, directory / f"{step}.orbax-checkpoint-tmp-1234")
  return workdir


def _without_encoder(source, tmp_path, monkeypatch):
  record = dataclasses.replace(objectives.OBJECTIVES["supervised"], name="probe_only",
                               has_encoder=False)
  monkeypatch.setitem(objectives.OBJECTIVES, "probe_only", record)
  workdir = _copy(source, tmp_path / "probe_only")
  path = os.path.join(workdir, CONFIG_FILE)
  stored = json.load(open(path))
  stored["objective"] = "probe_only"
  json.dump(stored, open(path, "w"))
  return workdir


BAD = [  # (what, overrides, init_from, words)
    ("width", {"width": 0.25}, "{source}", ["width differs", "width=0.125", "width=0.25"]),
    ("model", {"model": "resnet18"}, "{source}",
     ["model differs", "model='resnet_tiny'", "model='resnet18'"]),
    ("stem", {"stem": "imagenet"}, "{source}", ["stem differs", "stem='cifar'"]),
    ("input channels", {}, "{source}", ["input channels differ", "takes 1 channels, this run 3"]),
    ("step missing", {}, "{source}@7", ["step 7 is not a complete checkpoint", "[1, 2]"]),
    ("no such source", {}, "{tmp}/nowhere", ["no such run directory or weights file"]),
    ("still writing", {}, "{writing}", ["no complete checkpoint", "still being written"]),
    ("damaged", {}, "{damaged}", ["checkpoint 2", "cannot be read"]),
    ("no encoder", {}, "{probe_only}", ["objective 'probe_only' has no encoder"]),
    ("fraction 0", {"supervised.label_fraction": 0.0}, "",
     ["config.supervised.label_fraction=0.0", "(0, 1]"]),
    ("fraction > 1", {"supervised.label_fraction": 1.5}, "",
     ["config.supervised.label_fraction=1.5", "(0, 1]"]),
    ("unknown class", {"supervised.label_mode": "binary:Hernia"}, "",
     ["config.supervised.label_mode='binary:Hernia'", "binary:normal"]),
    ("unknown mode", {"supervised.label_mode": "severity"}, "",
     ["config.supervised.label_mode='severity'", "accepted"]),
    ("negative multiplier", {"supervised.encoder_lr_multiplier": -1.0}, "",
     ["config.supervised.encoder_lr_multiplier=-1.0", ">= 0"]),
    ("unlabelled", {"supervised.label_fraction": 0.5}, "",
     ["config.supervised.label_fraction=0.5", "needs labels", "unlabelled"]),
    ("simclr with a fraction", {"objective": "simclr", "supervised.label_fraction": 0.5}, "",
     ["config.supervised.label_fraction=0.5", "objective='supervised'"]),
    ("balanced on other classes", {"input.class_balanced": True,
                                   "supervised.label_mode": "binary:normal"}, "",
     ["config.input.class_balanced=True", "label_mode='binary:normal'"]),
    ("selected on test", {"supervised.select_by_validation": 2, "online_eval.eval_split": "test"},
     "", ["select_by_validation=2", "eval_split='test'", "validation"]),
]


@pytest.mark.parametrize("what, overrides, init_from, words", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_one_line_and_writes_nothing(what, overrides, init_from, words,
                                                  synthetic_data_dir, source, tmp_path,
                                                  monkeypatch):
  places = {"source": source, "tmp": str(tmp_path)}
  if "{writing}" in init_from:
    places["writing"] = _writing(source, tmp_path)
  if "{damaged}" in init_from:
    places["damaged"] = _damaged(source, tmp_path)
  if "{probe_only}" in init_from:
    places["probe_only"] = _without_encoder(source, tmp_path, monkeypatch)
  if what == "unlabelled":
    monkeypatch.setattr(registry, "is_labelled", lambda *_: False)
  if what == "input channels":   # as if this version's encoders took RGB input
    monkeypatch.setattr(init_from_lib, "INPUT_CHANNELS", 3)
  config = _config(synthetic_data_dir, init_from=init_from.format(**places), **overrides)
  workdir = tmp_path / "run"
  with pytest.raises(errors.ConfigError) as raised:
    loop.train_and_evaluate(config, str(workdir))
  message = str(raised.value)
  assert "\n" not in message and raised.value.exit_code == 2, message
  for word in words:
    assert word in message, (what, message)
  assert not workdir.exists()


# -------------------------------------------------- frozen, selection, report, resume

def test_frozen_run_keeps_the_encoder_bit_exact_selects_on_validation_and_resumes(
    synthetic_data_dir, source, tmp_path):
  """Frozen fine-tuning from a WORKDIR (no @STEP) with validation selection every step,
  stopped after step 1 and resumed after the source trained further: the resume keeps the
  recorded source step and never reads the source again; no encoder parameter or batch
  statistic changes; the best validation step's checkpoint is kept besides the newest,
  recorded, and evaluated by --step best with a report naming the source and the subset."""
  from simclr_jax.evaluation import encoders
  from simclr_jax.evaluation import offline
  origin = _copy(source, tmp_path / "origin")
  workdir = str(tmp_path / "frozen")
  config = _config(synthetic_data_dir, init_from=origin, keep_checkpoints=1,
                   checkpoint_every_steps=100, **{
                       "supervised.freeze_encoder": True, "supervised.label_fraction": 0.5,
                       "supervised.select_by_validation": 1})
  loop.train_and_evaluate(_flat(config, stop_at_step=1), workdir)   # a job's time limit
  stored = json.load(open(os.path.join(workdir, CONFIG_FILE)))
  assert stored["init_source"]["step"] == 2 and stored["supervised"]["subset"]["num_images"] > 0
  # The source trains further (step 9) and its step 2 goes: the resume must not read it.
  directory = checkpointing.checkpoint_directory(origin)
  _, start, _ = checkpointing.load_for_eval(origin, 2)
  os.rename(directory / "2", directory / "9")
  shutil.rmtree(directory / "1")
  assert settings.check_run(config).config.init_source.step == 9   # a new run would take 9
  loop.train_and_evaluate(config, workdir)                          # resumes at step 1
  assert json.load(open(os.path.join(workdir, CONFIG_FILE)))["init_source"] == (
      stored["init_source"])

  _, trained, _ = checkpointing.load_for_eval(workdir, 2)
  assert _tree_equal(trained["params"]["encoder"], start["params"]["encoder"])
  assert _tree_equal(trained["batch_stats"]["encoder"], start["batch_stats"]["encoder"])
  assert not _tree_equal(trained["params"]["classifier"], start["params"]["classifier"])
  record = json.load(open(os.path.join(workdir, BEST_CHECKPOINT_FILE)))
  assert [entry["step"] for entry in record["history"]] == [1, 2]
  best = record["best"]["step"]
  assert checkpointing.best_step(workdir) == (best, record["best"]["validation_auroc"])
  assert checkpointing.complete_steps(workdir) == sorted({best, 2})

  encoder = encoders.load_encoder(workdir=workdir, step=encoders.parse_step("best"))
  plan = offline.plan(offline.Data(dataset="synthetic_cxr/32", data_dir=str(synthetic_data_dir),
                                   split="test"), {"classifier": {}})
  report = offline.evaluate_encoder(encoder, plan, offline.Output(
      str(tmp_path / "eval"), plots=False, save_features=False))
  assert report["checkpoint_step"] == best and 0.0 <= report["classifier_auroc_macro"] <= 1.0
  assert report["init_from"] == stored["init_source"]
  assert report["training"]["subset"] == stored["supervised"]["subset"]
  assert report["training"]["label_fraction"] == 0.5
  assert "frozen encoder" in report["encoder_init"] and f"{origin}@2" in report["encoder_init"]
  markdown = open(tmp_path / "eval" / "report.md").read()
  assert stored["supervised"]["subset"]["ids_sha256"] in markdown

  # A selection record that cannot be written (here a folder where the file goes; a full
  # disk or a read-only workdir alike) ends the run with one line, no temporary file left.
  from simclr_jax.evaluation import selection as selection_lib
  blocked = tmp_path / "blocked"
  os.makedirs(blocked / BEST_CHECKPOINT_FILE)
  chooser = selection_lib.ValidationSelection.__new__(selection_lib.ValidationSelection)
  chooser._config, chooser._workdir, chooser.split = config, str(blocked), "validation"
  chooser.history = [{"step": 3, selection_lib.METRIC: 0.5}]
  with pytest.raises(errors.WorkdirNotWritable) as raised:
    chooser._write()
  assert "\n" not in str(raised.value) and "validation selection of step 3" in str(raised.value)
  assert sorted(os.listdir(blocked)) == [BEST_CHECKPOINT_FILE]


def _flat(config, **fields):
  config = config.copy_and_resolve_references()
  config.update_from_flattened_dict(fields)
  return config


# ----------------------------------------------------------- encoder_lr_multiplier

def test_encoder_lr_multiplier_scales_the_encoder_update_and_zero_keeps_bn_training(
    synthetic_data_dir):
  params = {"encoder": {"kernel": np.full((3,), 2.0, np.float32)},
            "classifier": {"kernel": np.full((3,), 2.0, np.float32)}}
  grads = jax.tree_util.tree_map(lambda x: np.full_like(x, 0.5), params)

  def update(multiplier, frozen=False, name="sgd"):
    config = _config(synthetic_data_dir, **{
        "optimizer.name": name, "optimizer.momentum": 0.0, "optimizer.weight_decay": 0.0,
        "optimizer.learning_rate": 0.1, "supervised.encoder_lr_multiplier": multiplier,
        "supervised.freeze_encoder": frozen})
    tx, _ = optim.create_optimizer(config, 10, 10)
    updates, _ = tx.update(grads, tx.init(params), params)
    return jax.tree_util.tree_map(np.asarray, updates)

  full, half = update(1.0), update(0.5)
  np.testing.assert_allclose(full["encoder"]["kernel"], -0.1 * 0.5)     # plain SGD
  np.testing.assert_array_equal(half["encoder"]["kernel"], 0.5 * full["encoder"]["kernel"])
  np.testing.assert_array_equal(half["classifier"]["kernel"], full["classifier"]["kernel"])
  adam_full, adam_half = update(1.0, name="adamw"), update(0.5, name="adamw")
  np.testing.assert_allclose(adam_half["encoder"]["kernel"],
                             0.5 * adam_full["encoder"]["kernel"], rtol=1e-6)
  for zero in (update(0.0), update(0.5, frozen=True)):
    assert not np.any(zero["encoder"]["kernel"]) and np.all(zero["classifier"]["kernel"])

  # Multiplier 0 is not freeze_encoder: the encoder runs in train mode, so the loss returns
  # new BatchNorm statistics (the step keeps them) while its parameters get no update (above).
  # (Frozen, they come back unchanged: the frozen run's test checks that bit for bit.)
  config = settings.check_run(_config(synthetic_data_dir, **{
      "supervised.encoder_lr_multiplier": 0.0})).config
  model = objectives.of(config).build_model(config, None)
  tx, _ = optim.create_optimizer(config, 2, 12)
  state = step_lib.create_train_state(config, model, tx, jax.random.PRNGKey(0), (16, 16, 1))
  iterator = data.create_train_iterator(config)
  batch = jax.tree_util.tree_map(lambda x: x[0], next(iterator))   # one device's share
  iterator.close()
  loss_fn = jax.jit(objectives.create_loss(config, model, None))
  _, (new_batch_stats, _) = loss_fn(state.params, state.batch_stats, batch,
                                    jax.random.PRNGKey(1), np.arange(8))
  assert not _tree_equal(new_batch_stats["encoder"], state.batch_stats["encoder"])


# ------------------------------------------------------------ the protocol's script

def test_label_efficiency_writes_the_table_and_a_rerun_trains_nothing(
    synthetic_data_dir, source, tmp_path, monkeypatch):
  from experiments import label_efficiency
  config_file = tmp_path / "tiny_finetune.py"
  config_file.write_text(
      "from tests.test_finetune import _config\n\n"
      "def get_config():\n"
      f"  return _config({str(synthetic_data_dir)!r}, keep_checkpoints=1,\n"
      "                 checkpoint_every_steps=100)\n")
  out = tmp_path / "out"
  argv = ["--dataset", "synthetic_cxr/32", "--data_dir", str(synthetic_data_dir),
          "--simclr_workdir", source, "--fractions", "0.5,1.0", "--seeds", "0",
          "--out", str(out), "--config", str(config_file),
          "--train_flags=--config.log_every_steps=1"]
  report = label_efficiency.main(argv)
  assert sorted(os.listdir(out)) == ["label_efficiency.png", "report.json", "report.md", "runs"]
  assert json.load(open(out / "report.json"))["rows"] == json.loads(json.dumps(report["rows"]))
  assert list(report["rows"]) == ["scratch", "simclr_finetune", "simclr_frozen"]
  keys = {"auroc_mean", "auroc_sd", "auroc_ci95", "n_images", "n_patients", "seeds"}
  for row, fractions in report["rows"].items():
    assert list(fractions) == ["0.5", "1.0"], row
    for text, entry in fractions.items():
      assert set(entry) == keys and entry["auroc_sd"] is None      # one seed
      assert 0.0 <= entry["auroc_mean"] <= 1.0
      assert entry["auroc_ci95"][0] <= entry["auroc_mean"] <= entry["auroc_ci95"][1]
      assert entry["seeds"][0]["checkpoint_step"] == 2
  # Every row trains on the same subset of each fraction; 1.0 is the whole split.
  for text in ("0.5", "1.0"):
    assert len({fractions[text]["seeds"][0]["subset_sha256"]
                for fractions in report["rows"].values()}) == 1
  assert report["rows"]["scratch"]["1.0"]["n_images"] == 96
  assert report["protocol"]["simclr_workdir"] == f"{source}@2"
  frozen = report["rows"]["simclr_frozen"]["0.5"]["seeds"][0]["run"]
  _, frozen_variables, _ = checkpointing.load_for_eval(frozen)
  _, source_variables, _ = checkpointing.load_for_eval(source, 2)
  assert _tree_equal(frozen_variables["params"]["encoder"], source_variables["params"]["encoder"])
  assert open(out / "label_efficiency.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert "| SimCLR, frozen encoder |" in open(out / "report.md").read()

  def no_training(*args, **kwargs):
    raise AssertionError("a finished run was trained again")
  monkeypatch.setattr(loop, "train_and_evaluate", no_training)
  again = label_efficiency.main(argv)
  assert again["rows"]["simclr_finetune"]["0.5"]["auroc_mean"] == (
      report["rows"]["simclr_finetune"]["0.5"]["auroc_mean"])
  assert all(seed["reused"] for fractions in again["rows"].values()
             for entry in fractions.values() for seed in entry["seeds"])
  # The same runs scored on another split are evaluated again (no training), never taken
  # from the test evaluations, and the other split's figures are its own.
  test_report = open(out / "report.json").read()
  assert label_efficiency.cli(argv + ["--split", "validation"]) == 2   # another protocol
  other = label_efficiency.main(argv + ["--split", "validation", "--overwrite"])
  seeds = [seed for fractions in other["rows"].values() for entry in fractions.values()
           for seed in entry["seeds"]]
  assert seeds and not any(seed["reused"] for seed in seeds)
  for seed in seeds:
    folder = os.path.dirname(seed["run"])
    assert json.load(open(os.path.join(folder, "eval-validation", "report.json")))[
        "split"] == "validation"
    assert json.load(open(os.path.join(folder, "eval-test", "report.json")))["split"] == "test"
  assert json.load(open(out / "report.json"))["protocol"]["split"] == "validation"
  open(out / "report.json", "w").write(test_report)   # the test protocol's report again
  # Another protocol's report in OUT is refused, and nothing changes there.
  before = open(out / "report.json").read()
  assert label_efficiency.cli(argv[:-1] + ["--train_flags=--config.log_every_steps=2"]) == 2
  assert open(out / "report.json").read() == before


def test_label_efficiency_rows_and_row_flags_set_one_row_only(synthetic_data_dir, source,
                                                              tmp_path):
  """--rows picks rows; --row_flags changes one row's settings (and its run folders' key)
  and no other's; bad rows / flags are refused before anything is planned."""
  from experiments import label_efficiency
  config_file = tmp_path / "tiny_finetune.py"
  config_file.write_text("from tests.test_finetune import _config\n\n"
                         "def get_config():\n"
                         f"  return _config({str(synthetic_data_dir)!r})\n")
  common = ["--dataset", "synthetic_cxr/32", "--data_dir", str(synthetic_data_dir),
            "--simclr_workdir", source, "--fractions", "0.5", "--seeds", "0",
            "--out", str(tmp_path / "out"), "--config", str(config_file)]

  def plan(*extra):
    runs, protocol = label_efficiency.plan_runs(label_efficiency._parser().parse_args(
        common + list(extra)))
    return {run.row: run for run in runs}, protocol

  plain, plain_protocol = plan("--rows", "simclr_finetune,scratch")
  assert list(plain) == ["scratch", "simclr_finetune"] and "row_flags" not in plain_protocol
  flagged, protocol = plan("--rows", "scratch,simclr_finetune", "--row_flags",
                           "simclr_finetune=--config.supervised.encoder_lr_multiplier=0.1 "
                           "--config.optimizer.learning_rate=0.0003")
  finetune = flagged["simclr_finetune"].config
  assert finetune.supervised.encoder_lr_multiplier == 0.1
  assert finetune.optimizer.learning_rate == 3e-4 and finetune.init_from.startswith(source)
  assert flagged["scratch"].config.optimizer.learning_rate == (
      plain["scratch"].config.optimizer.learning_rate)
  assert protocol["row_keys"]["scratch"] == plain_protocol["row_keys"]["scratch"]
  assert protocol["row_keys"]["simclr_finetune"] != plain_protocol["row_keys"]["simclr_finetune"]
  assert protocol["row_flags"] == {"simclr_finetune": "--config.supervised.encoder_lr_multiplier"
                                                      "=0.1 --config.optimizer.learning_rate=0.0003"}
  # --frozen_simclr_workdir: another pretraining for the frozen row only, recorded.
  both, protocol = plan("--rows", "simclr_finetune,simclr_frozen",
                        "--frozen_simclr_workdir", f"{source}@1")
  assert both["simclr_frozen"].config.init_from.endswith("@1")
  assert both["simclr_finetune"].config.init_from.endswith("@2")
  assert protocol["frozen_simclr_workdir"].endswith("@1")
  assert "frozen_simclr_workdir" not in plan("--rows", "simclr_frozen")[1]
  for extra, words in ((["--rows", "scratch,linear"], "'linear' is not a row"),
                       (["--rows", "imagenet_finetune"], "needs --imagenet_weights"),
                       (["--rows", "scratch", "--row_flags", "simclr_frozen=--config.seed=1"],
                        "simclr_frozen is not run"),
                       (["--row_flags", "frozen=--config.seed=1"], "give ROW=FLAGS"),
                       (["--row_flags", "scratch=--config.optimiser.learning_rate=1"],
                        "--train_flags"),
                       (["--split", "validation", "--row_flags",
                         "simclr_finetune=--config.supervised.select_by_validation=5"],
                        "choose their checkpoint on that split")):
    with pytest.raises(ValueError, match=words):
      plan(*extra)
  assert not os.path.exists(tmp_path / "out")
