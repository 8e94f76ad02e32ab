"""Progress lines for batch-job logs (stdout not a terminal)."""
import io

from simclr_jax.runtime.progress import Progress


def test_logs_one_line_per_interval_and_the_last_one_when_not_a_tty():
  stream = io.StringIO()  # not a TTY, like a SLURM log
  progress = Progress(25, desc="train", unit="step", every=10, stream=stream)
  assert not progress.interactive
  for step in range(25):
    progress.update(1, loss=3.0 - 0.1 * step)
  progress.close("done")
  lines = stream.getvalue().splitlines()
  assert [line.split()[2] for line in lines[:3]] == ["10/25", "20/25", "25/25"]
  assert lines[0].startswith("[train] step 10/25 (40.0%) loss 2.1000")
  assert "ETA" in lines[0] and "ETA" not in lines[2]  # no ETA once finished
  assert lines[3] == "[train] done"


def test_resumed_progress_counts_from_initial_and_updates_of_several_units():
  stream = io.StringIO()
  progress = Progress(100, desc="evaluate", unit="image", every=32, initial=40, stream=stream)
  progress.update(16)   # 56: no boundary crossed
  progress.update(16)   # 72: crosses 64
  progress.close()      # 72 again at the end? it was just logged: no duplicate
  lines = stream.getvalue().splitlines()
  assert len(lines) == 1 and lines[0].startswith("[evaluate] image 72/100")


def test_disabled_progress_prints_nothing():
  stream = io.StringIO()
  progress = Progress(10, desc="train", every=1, stream=stream, enabled=False)
  progress.update(5)
  progress.close("summary")
  assert stream.getvalue() == "" and progress.count == 5


def test_once_fields_show_on_the_next_line_only_and_excluded_time_leaves_the_eta(monkeypatch):
  """The online monitor's scalars show on the next printed line only (also when they were
  measured between two lines); its seconds and the first step's compilation do not count in
  the rate behind the ETA."""
  from simclr_jax.runtime import progress as progress_module
  clock = [0.0]
  monkeypatch.setattr(progress_module.time, "perf_counter", lambda: clock[0])
  stream = io.StringIO()
  progress = Progress(40, desc="train", every=10, stream=stream)
  clock[0] += 30.0                        # step 1 compiles for 30 s
  progress.restart_interval(pending=1)    # ... and is left out of the rate
  progress.update(1, loss=4.0)
  for step in range(2, 31):
    clock[0] += 1.0                       # 1 s per step
    once = {}
    if step in (10, 25):
      clock[0] += 50.0                    # an online evaluation of 50 s
      progress.exclude(50.0)
      once["knn_accuracy"] = step / 100
    progress.update(1, once=once, loss=4.0)
  lines = stream.getvalue().splitlines()
  assert lines == ["[train] step 10/40 (25.0%) loss 4.0000 knn_accuracy 0.1 ETA 0:00:30",
                   "[train] step 20/40 (50.0%) loss 4.0000 ETA 0:00:20",
                   "[train] step 30/40 (75.0%) loss 4.0000 knn_accuracy 0.25 ETA 0:00:10"]
