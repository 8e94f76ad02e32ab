"""experiments.seed_table: mean ± sd over comparisons repeated with several seeds."""
import json
import os
import statistics
import subprocess
import sys

import pytest

from experiments import seed_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _report(accuracy, auroc, auroc_at_10, split="test"):
  return dict(dataset="nih_chest_xray14/thumbs64", split=split, train_split="train",
              label_mode="binary:No Finding", k=2, features="encoder", cluster_accuracy=accuracy, nmi=0.01, ari=0.0, linear_auroc_macro=auroc,
              knn_accuracy=0.5, knn_auroc_macro=float("nan"),
              label_fractions=[dict(fraction=0.1, linear_auroc_macro=auroc_at_10),
                               dict(fraction=1.0, linear_auroc_macro=auroc)])


def _write(tmp_path, seed, comparison):
  folder = tmp_path / f"seed{seed}" / "compare"
  folder.mkdir(parents=True)
  (folder / "report.json").write_text(json.dumps(comparison))
  return str(folder / "report.json")


def test_cells_are_mean_and_sample_sd_over_seeds(tmp_path, capsys):
  paths = [_write(tmp_path, seed, dict(simclr=_report(acc, auroc, 0.4),
                                       random_init=_report(0.5, 0.5 + seed / 100, 0.45)))
           for seed, (acc, auroc) in enumerate([(0.6, 0.58), (0.7, 0.62), (0.8, 0.60)])]
  text = seed_table.main(paths + ["--out", str(tmp_path / "table.md")])
  simclr_line = next(line for line in text.splitlines() if line.startswith("| SimCLR"))
  cells = [cell.strip() for cell in simclr_line.strip("|").split("|")]
  assert cells[1] == f"0.700 ± {statistics.stdev([0.6, 0.7, 0.8]):.3f}"     # clustering accuracy
  assert cells[4] == "0.600 ± 0.020"                                         # linear AUROC
  assert cells[6] == "n/a"                                                   # NaN never averaged
  assert cells[7] == "0.400 ± 0.000" and cells[8] == "0.600 ± 0.020"         # @ 0.1, @ 1 labels
  random_line = next(line for line in text.splitlines() if line.startswith("| Random init"))
  assert "0.510 ± 0.010" in random_line
  assert "over 3 runs (seed0, seed1, seed2)" in text and "encoder features; 3 runs" in text
  # Per seed, by name.
  assert "- SimCLR (JAX) linear AUROC: seed0 0.580, seed1 0.620, seed2 0.600" in text
  assert (tmp_path / "table.md").read_text() == text
  assert capsys.readouterr().out == text
  assert "patient shortcut" not in text   # only where the reports have it
  for path in paths:
    with open(path) as f:
      comparison = json.load(f)
    for report in comparison.values():
      report.update(patient_shortcut=0.25, patient_shortcut_chance=0.01)
    with open(path, "w") as f:
      json.dump(comparison, f)
  text = seed_table.main(paths)
  header = next(line for line in text.splitlines() if line.startswith("| Method"))
  assert header.endswith("| patient shortcut | patient shortcut chance |")
  simclr_line = next(line for line in text.splitlines() if line.startswith("| SimCLR"))
  assert simclr_line.endswith("| 0.250 ± 0.000 | 0.010 ± 0.000 |")


def test_refuses_mixed_settings_and_existing_out(tmp_path):
  first = _write(tmp_path, 0, dict(simclr=_report(0.6, 0.6, 0.5)))
  other = _write(tmp_path, 1, dict(simclr=_report(0.6, 0.6, 0.5, split="validation")))
  with pytest.raises(ValueError, match="differ in"):
    seed_table.main([first, other])
  projection = _write(tmp_path, 2, dict(simclr=dict(_report(0.6, 0.6, 0.5),
                                                    features="projection")))
  with pytest.raises(ValueError, match="differ in"):
    seed_table.main([first, projection])
  row_report = tmp_path / "row_report.json"          # OUT/simclr/report.json by mistake
  row_report.write_text(json.dumps(_report(0.6, 0.6, 0.5)))
  with pytest.raises(ValueError, match="not the OUT/report.json of experiments.compare"):
    seed_table.main([first, str(row_report)])
  (tmp_path / "table.md").write_text("mine")
  result = subprocess.run([sys.executable, "-m", "experiments.seed_table", first,
                           "--out", str(tmp_path / "table.md")], cwd=ROOT,
                          capture_output=True, text=True, check=False)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f"error: --out={tmp_path / 'table.md'} exists; pass --overwrite to replace it."]
  assert (tmp_path / "table.md").read_text() == "mine"


def test_averages_like_with_like_only(tmp_path):
  """Refused, naming the field, the row and each seed's value: other knn_k, k-means
  restarts, probe settings, example counts, label-fraction sizes or rows. A cell some runs
  lack is never averaged over fewer runs than the table says."""
  def paths(**changes):
    base = dict(_report(0.6, 0.6, 0.5), knn_k=20, kmeans_n_init=10, num_examples=200,
                linear_probe_solver="jax", linear_probe_max_iter=1000)
    folder = tmp_path / "_".join(changes)
    return [_write(folder / name, 0, dict(simclr=dict(base, **change)))
            for name, change in (("a", {}), ("b", changes))]
  for field, value in (("knn_k", 5), ("kmeans_n_init", 1), ("linear_probe_solver", "sklearn"),
                       ("linear_probe_max_iter", 50), ("num_examples", 199),
                       ("label_mode", "single")):
    with pytest.raises(ValueError, match=f"differ in {field}") as error:
      seed_table.main(paths(**{field: value}))
    if field != "label_mode":
      assert "row simclr" in str(error.value) and f"{value!r}" in str(error.value)
  fewer = dict(_report(0.6, 0.6, 0.5), label_fractions=[
      dict(fraction=0.1, num_train_patients=9, linear_auroc_macro=0.5)])
  with pytest.raises(ValueError, match="differ in label_fractions"):
    seed_table.main(paths(label_fractions=fewer["label_fractions"]))
  # A patient-wise subset drawn with another seed: as many patients, other images: alike.
  sizes = [dict(_report(0.6, 0.6, 0.5), label_fractions=[dict(
      fraction=0.1, num_train_examples=images, num_train_patients=16, linear_auroc_macro=0.5,
      linear_auroc_macro_ci95=[0.4, 0.6])]) for images in (64, 34)]
  text = seed_table.main([_write(tmp_path / f"sizes{i}", i, dict(simclr=report))
                          for i, report in enumerate(sizes)])
  assert "label fraction 0.1: seed0 64 images / 16 patients, seed1 34 images / 16 patients" in text
  assert "- SimCLR (JAX) linear AUROC @ 0.1 labels: [0.400, 0.600]; seed0 [0.400, 0.600]" in text
  first = _write(tmp_path / "c", 0, dict(simclr=_report(0.6, 0.6, 0.5),
                                         random_init=_report(0.5, 0.5, 0.5)))
  second = _write(tmp_path / "d", 0, dict(simclr=_report(0.6, 0.6, 0.5)))
  with pytest.raises(ValueError, match="differ in their rows .*random_init, simclr; .*: simclr"):
    seed_table.main([first, second])
  # NaN in one of three runs: no mean over two under a "3 runs" header.
  runs = [_write(tmp_path / f"e{seed}", seed, dict(simclr=_report(0.6, auroc, 0.5)))
          for seed, auroc in enumerate([0.6, float("nan"), 0.7])]
  text = seed_table.main(runs)
  line = next(line for line in text.splitlines() if line.startswith("| SimCLR"))
  assert "n/a (values in 2 of 3 runs)" in line
  assert "- SimCLR (JAX) linear AUROC: seed0 0.600, seed1 n/a, seed2 0.700" in text


def test_patient_pairs_table_chooses_on_validation_then_marks_the_test_row(tmp_path):
  """experiments.patient_pairs_table: a SimCLR row per setting (read from the runs'
  config.json) and the random init; the choice is made on validation, and the test table
  is refused until it was."""
  from experiments import patient_pairs_table

  def write(setting, seed, split, probability, mask, auroc_at_10, random_init):
    run = tmp_path / setting / f"seed{seed}"
    (run / "simclr").mkdir(parents=True, exist_ok=True)
    (run / "simclr" / "config.json").write_text(json.dumps(
        {"pairs": {"same_patient_prob": probability}, "loss": {"mask_same_patient": mask}}))
    comparison = {"simclr": dict(_report(0.6, 0.6, auroc_at_10, split=split),
                                 patient_shortcut=0.3 - probability / 10,
                                 patient_shortcut_chance=0.02)}
    if random_init:
      comparison["random_init"] = dict(_report(0.5, 0.5, 0.5, split=split),
                                       patient_shortcut=0.1, patient_shortcut_chance=0.02)
    (run / f"compare_{split}").mkdir()
    (run / f"compare_{split}" / "report.json").write_text(json.dumps(comparison))

  # Folder names sort p1 before p0.5 ('.' < '_'); rows follow (p, mask).
  settings = [("p1_maskTrue", 1.0, True), ("p0_maskFalse", 0.0, False)]
  for split in ("validation", "test"):
    for index, (setting, probability, mask) in enumerate(settings):
      for seed in (0, 1):
        # p = 1 is better on validation, worse on test: the choice must not move.
        better = (probability > 0) == (split == "validation")
        write(setting, seed, split, probability, mask, 0.7 + 0.1 * better + seed / 100,
              random_init=index == 1)
  root = str(tmp_path)
  with pytest.raises(ValueError, match="chosen.json not found: choose the setting on the "
                                       "validation split first"):
    patient_pairs_table.main([root, "--split", "test"])
  validation = patient_pairs_table.main([root, "--split", "validation"])
  chosen = json.loads((tmp_path / "chosen.json").read_text())
  assert chosen["setting"] == "p1_maskTrue" and chosen["choose_by"] == "fraction:0.1"
  assert abs(chosen["validation_mean"] - 0.805) < 1e-9
  lines = validation.splitlines()
  assert "2 settings x 2 seeds" in lines[0]
  header = next(line for line in lines if line.startswith("| Method"))
  assert "linear AUROC @ 0.1 labels" in header and header.endswith(
      "| patient shortcut | patient shortcut chance |")
  row = next(line for line in lines if line.startswith(
      "| SimCLR, same-patient p = 1, mask on (chosen on validation)"))
  assert "| 0.805 ± 0.007 |" in row and row.endswith("| 0.200 ± 0.000 | 0.020 ± 0.000 |")
  rows = [line.split("|")[1].strip() for line in lines if line.startswith("| ")][1:]
  assert rows == ["SimCLR, same-patient p = 0, mask off",
                  "SimCLR, same-patient p = 1, mask on (chosen on validation)",
                  "Random init (torchvision-style)"]
  test = patient_pairs_table.main([root, "--split", "test", "--out", str(tmp_path / "t.md")])
  assert "| SimCLR, same-patient p = 1, mask on (chosen on validation) | 0.600" in test
  with pytest.raises(ValueError, match="--choose_by=nope: not a column"):
    patient_pairs_table.main([root, "--split", "validation", "--choose_by", "nope"])

  # experiments.label_efficiency at 10 % per setting and seed (finetune_test/): its fine-tuned
  # and frozen AUROCs become columns of the SimCLR rows, scratch one of the random init's
  # (trained in whichever setting the script ran first: here the one whose row comes second);
  # a row lacking a column shows n/a in its place, so every row's cells stay under the header.
  def write_finetuning(setting, probability, seed, scratch, split="test"):
    rows = {"simclr_finetune": {"0.1": {"auroc_mean": 0.61 + probability / 10 + seed / 100}},
            "simclr_frozen": {"0.1": {"auroc_mean": 0.55}}}
    if scratch:
      rows["scratch"] = {"0.1": {"auroc_mean": 0.52 + seed / 100}}
    folder = tmp_path / setting / f"seed{seed}" / "finetune_test"
    folder.mkdir(exist_ok=True)
    (folder / "report.json").write_text(json.dumps(
        {"rows": rows, "protocol": {"split": split, "simclr_workdir": f"{setting}/{seed}"}}))

  write_finetuning("p1_maskTrue", 1.0, 0, scratch=True)
  with pytest.raises(ValueError, match="reports for some runs but not all"):
    patient_pairs_table.main([root, "--split", "test"])
  for setting, probability, _ in settings:
    for seed in (0, 1):
      write_finetuning(setting, probability, seed, scratch=setting == "p1_maskTrue")
  write_finetuning("p0_maskFalse", 0.0, 1, scratch=False, split="validation")
  with pytest.raises(ValueError, match="different settings"):
    patient_pairs_table.main([root, "--split", "test"])
  write_finetuning("p0_maskFalse", 0.0, 1, scratch=False)
  test = patient_pairs_table.main([root, "--split", "test"])
  lines = test.splitlines()
  header = next(line for line in lines if line.startswith("| Method")).split(" | ")
  assert header[-3:] == ["fine-tuned AUROC @ 0.1 labels", "frozen-encoder AUROC @ 0.1 labels",
                         "from-scratch AUROC @ 0.1 labels |"]
  cells = {line.split(" | ")[0]: line.split(" | ") for line in lines if line.startswith("| ")}
  assert cells["| SimCLR, same-patient p = 1, mask on (chosen on validation)"][-3:] == [
      "0.715 ± 0.007", "0.550 ± 0.000", "n/a |"]
  assert cells["| Random init (torchvision-style)"][-3:] == ["n/a", "n/a", "0.525 ± 0.007 |"]
  assert all(len(row) == len(header) for row in cells.values())


def test_finetune_search_rule_keeps_the_earlier_candidate_on_a_tie():
  """experiments.finetune_search's choice: the highest validation score, but a later
  candidate must win by more than TIE, so the config's own settings (listed first) stay on a
  tie; the table marks the chosen candidate of each row."""
  from experiments import finetune_search

  def candidate(score):
    return {"flags": "--config.optimizer.learning_rate=1e-3", "simclr_workdir": None,
            "score": score, "fractions": {"0.01": {"auroc_mean": score, "auroc_sd": 0.01},
                                          "0.1": {"auroc_mean": score, "auroc_sd": None}}}
  tie = finetune_search.TIE
  assert finetune_search._best({"a": candidate(0.5), "b": candidate(0.5 + tie / 2)}) == "a"
  assert finetune_search._best({"a": candidate(0.5), "b": candidate(0.5 + 2 * tie)}) == "b"
  assert finetune_search._best({"a": candidate(0.6), "b": candidate(0.5),
                                "c": candidate(0.6 + tie / 2)}) == "a"
  choice = {"dataset": "d", "rule": "r", "seeds": "0,1", "simclr_workdir": "w",
            "fractions": "0.01,0.1",
            "rows": {"scratch": {"chosen": "b", "candidates": {"a": candidate(0.5),
                                                              "b": candidate(0.52)}}},
            "label_efficiency_args": ["--simclr_workdir", "w"]}
  lines = finetune_search.markdown(choice).splitlines()
  assert "| scratch | b **(chosen)** | 0.520 ± 0.010 | 0.520 | 0.520 |" in lines
  assert "| scratch | a | 0.500 ± 0.010 | 0.500 | 0.500 |" in lines
  # The protocol's arguments: each row's chosen flags; the frozen row's pretraining only
  # when validation chose another one for it.
  rows = {"scratch": {"flags": "--config.seed=1", "simclr_workdir": None},
          "simclr_finetune": {"flags": "--config.optimizer.learning_rate=1e-3",
                              "simclr_workdir": "w100"},
          "simclr_frozen": {"flags": "--config.optimizer.learning_rate=1e-2",
                            "simclr_workdir": "w50"}}
  assert finetune_search.protocol_args(rows, "w100") == [
      "--rows", "scratch,simclr_finetune,simclr_frozen",
      "--simclr_workdir", "w100", "--frozen_simclr_workdir", "w50",
      "--row_flags", "scratch=--config.seed=1",
      "--row_flags", "simclr_finetune=--config.optimizer.learning_rate=1e-3",
      "--row_flags", "simclr_frozen=--config.optimizer.learning_rate=1e-2"]
  rows["simclr_frozen"]["simclr_workdir"] = "w100"
  assert "--frozen_simclr_workdir" not in finetune_search.protocol_args(rows, "w100")
  # Only the searched rows run: an unsearched row never runs untuned, and never moves to the
  # fine-tuned row's chosen pretraining.
  rows = {"simclr_finetune": {"flags": "", "simclr_workdir": "w50"}}
  assert finetune_search.protocol_args(rows, "w100") == [
      "--rows", "simclr_finetune", "--simclr_workdir", "w50", "--row_flags", "simclr_finetune="]
  # A candidate without a score (a non-finite AUROC in some seed) never wins.
  assert finetune_search._best({"a": dict(candidate(0.5), score=None),
                                "b": candidate(0.4)}) == "b"
  with pytest.raises(ValueError, match="no candidate has a finite validation AUROC"):
    finetune_search._best({"a": dict(candidate(0.5), score=None)})
  # Every candidate is scored on the validation split with a fixed schedule: the checkpoint
  # is not chosen on the split that scores it, and the test split is never read.
  args = finetune_search._parser().parse_args(
      ["--dataset", "d", "--data_dir", "dd", "--simclr_workdir", "w", "--out", "o"])
  argv = finetune_search.candidate_argv(args, "scratch", "lr1e-3", "--config.seed=1", "w")
  assert argv[argv.index("--split") + 1] == "validation" and "test" not in argv
  assert argv[-1] == ("--train_flags=--config.supervised.select_by_validation=0 "
                      "--config.seed=1")
  assert argv[argv.index("--out") + 1] == os.path.join("o", "scratch", "lr1e-3")
  for bad, words in ((["--rows", ","], "give distinct rows"),
                     (["--rows", "scratch,scratch"], "give distinct rows"),
                     (["--rows", "linear"], "'linear' is not a row"),
                     (["--rows", "imagenet_finetune"], "imagenet_finetune is not searched"),
                     (["--pretraining", "a/b=w"], "distinct NAME"),
                     (["--pretraining", "a=w", "--pretraining", "a=v"], "distinct NAME")):
    with pytest.raises(ValueError, match=words):
      finetune_search._check(finetune_search._parser().parse_args(
          ["--dataset", "d", "--data_dir", "dd", "--simclr_workdir", "w", "--out", "o"] + bad))
