"""simclr_jax.doctor and launch.sh setup: accelerator detection, the JAX build it implies,
re-installs when the choice changes, and a real train step on the detected accelerator."""
import json
import os
import pathlib
import shlex
import subprocess
import sys

import pytest
from packaging.specifiers import SpecifierSet

from conftest import REPO_ROOT, USER_JAX_PLATFORMS
from simclr_jax.runtime import doctor

FAILING_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA "
                  "driver. Make sure that the latest NVIDIA driver is installed and running.")


def header(driver: str, cuda: str) -> str:
  """The first lines of a plain `nvidia-smi` call."""
  return (f"+-----------------------------------------------------------------------------+\n"
          f"| NVIDIA-SMI {driver}   Driver Version: {driver}   CUDA Version: {cuda}     |\n"
          f"|-------------------------------+----------------------+----------------------+\n")


def fake_nvidia_smi(directory: pathlib.Path, *, query: str = "", header_text: str = "",
                    fail: str = "", knows_compute_cap: bool = True) -> pathlib.Path:
  """An executable `nvidia-smi` in `directory` answering like a real one; returns directory."""
  directory.mkdir(parents=True, exist_ok=True)
  script = directory / "nvidia-smi"
  if fail:
    body = f"echo {json.dumps(fail)}\nexit 9\n"
  else:
    no_cap = ("" if knows_compute_cap else
              'if [[ "$*" == *compute_cap* ]]; then\n'
              '  echo \'Field "compute_cap" is not a valid field to query.\'; exit 2\nfi\n')
    body = (f"{no_cap}"
            f'if [[ "$*" == *--query-gpu* ]]; then\n  printf %s {json.dumps(query)}\n'
            f"else\n  printf %s {json.dumps(header_text)}\nfi\n")
  script.write_text("#!/bin/bash\n" + body)
  script.chmod(0o755)
  return directory


def detect_with(tmp_path, bin_dir=None, **environ) -> doctor.Detection:
  """detect() with only `bin_dir` on PATH and no TPU hardware visible."""
  empty = tmp_path / "empty"
  empty.mkdir(exist_ok=True)
  environ["PATH"] = str(bin_dir or empty)
  return doctor.detect(environ, pci_root=str(tmp_path / "no_pci"),
                       accel_glob=str(tmp_path / "no_accel*"))


@pytest.mark.parametrize("query, header_text, knows_cap, expected", [
    # Driver 535 runs CUDA 12.2: the CUDA 12 build.
    ("0, NVIDIA A100-SXM4-80GB, 535.183.01, 8.0, 81920\n", header("535.183.01", "12.2"), True,
     "cuda12"),
    # Driver 580 runs CUDA 13: the CUDA 13 build (two GPUs).
    ("0, NVIDIA H100 80GB HBM3, 580.82.07, 9.0, 81559\n"
     "1, NVIDIA H100 80GB HBM3, 580.82.07, 9.0, 81559\n", header("580.82.07", "13.0"), True,
     "cuda13"),
    # A CUDA 13 driver, but a V100 (compute capability 7.0): CUDA 13 dropped it.
    ("0, Tesla V100-SXM2-32GB, 580.82.07, 7.0, 32768\n", header("580.82.07", "13.0"), True,
     "cuda12"),
    # No "CUDA Version" in the header: the driver version decides (>= 580: CUDA 13).
    ("0, NVIDIA H200, 590.10.01, 9.0, 143771\n", "no header here\n", True, "cuda13"),
    # An old nvidia-smi without the compute_cap field: the query without it is used.
    ("0, NVIDIA A10G, 525.60.13, 23028\n", header("525.60.13", "12.0"), False, "cuda12"),
])
def test_nvidia_driver_decides_the_cuda_build(tmp_path, query, header_text, knows_cap,
                                              expected):
  bin_dir = fake_nvidia_smi(tmp_path / "bin", query=query, header_text=header_text,
                            knows_compute_cap=knows_cap)
  detection = detect_with(tmp_path, bin_dir)
  assert (detection.accelerator, detection.source) == (expected, "nvidia-smi")
  assert detection.warnings == ()
  assert detection.nvidia.gpus[0].name in detection.reason
  assert doctor.jax_requirement(detection.accelerator).startswith(f"jax[{expected}]")


def test_a_driver_too_old_for_jax_installs_the_cpu_build_and_says_why(tmp_path):
  bin_dir = fake_nvidia_smi(tmp_path / "bin", query="0, Tesla T4, 470.256.02, 7.5, 15360\n",
                            header_text=header("470.256.02", "11.4"))
  detection = detect_with(tmp_path, bin_dir)
  assert detection.accelerator == "cpu"
  assert len(detection.warnings) == 1
  assert "470.256.02" in detection.warnings[0] and ">= 525" in detection.warnings[0]


def test_failing_nvidia_smi_and_no_nvidia_smi_mean_cpu(tmp_path):
  failing = detect_with(tmp_path, fake_nvidia_smi(tmp_path / "bin", fail=FAILING_DRIVER))
  assert failing.accelerator == "cpu" and failing.source == "nvidia-smi"
  assert "couldn't communicate with the NVIDIA driver" in failing.warnings[0]
  assert "exit 9" in failing.reason
  absent = detect_with(tmp_path)
  assert (absent.accelerator, absent.source, absent.warnings) == ("cpu", "none", ())


def test_tpu_vm_is_detected_from_the_pci_bus_or_dev_accel(tmp_path):
  pci = tmp_path / "pci"
  for slot, vendor, device in (("0000:00:04.0", "0x1ae0", "0x0063"),   # TPU v5e chip
                               ("0000:00:05.0", "0x1ae0", "0x0063"),
                               ("0000:00:06.0", "0x10de", "0x2330"),   # an NVIDIA device
                               ("0000:00:07.0", "0x1ae0", "0x0042")):  # Google, not a TPU
    (pci / slot).mkdir(parents=True)
    (pci / slot / "vendor").write_text(vendor + "\n")
    (pci / slot / "device").write_text(device + "\n")
  assert doctor.count_tpu_chips(str(pci), str(tmp_path / "none*")) == (2, "v5e")
  dev = tmp_path / "dev"
  dev.mkdir()
  for index in range(4):
    (dev / f"accel{index}").touch()
  assert doctor.count_tpu_chips(str(tmp_path / "no_pci"), str(dev / "accel[0-9]*")) == (4, None)
  detection = doctor.detect({"PATH": str(tmp_path)}, pci_root=str(pci),
                            accel_glob=str(tmp_path / "none*"))
  assert (detection.accelerator, detection.tpu_chips) == ("tpu", 2)


def test_override_wins_and_warns_when_it_contradicts_the_hardware(tmp_path):
  bin_dir = fake_nvidia_smi(tmp_path / "bin", query="0, NVIDIA H100, 580.82.07, 9.0, 81559\n",
                            header_text=header("580.82.07", "13.0"))
  chosen = detect_with(tmp_path, bin_dir, SIMCLR_ACCELERATOR="cuda12")
  assert (chosen.accelerator, chosen.source) == ("cuda12", "SIMCLR_ACCELERATOR")
  assert "driver suggests cuda13" in chosen.warnings[0]
  assert detect_with(tmp_path, bin_dir, SIMCLR_ACCELERATOR="auto").accelerator == "cuda13"
  forced_cpu = detect_with(tmp_path, bin_dir, SIMCLR_ACCELERATOR="CPU")
  assert forced_cpu.accelerator == "cpu"
  assert forced_cpu.warnings[0].startswith("SIMCLR_ACCELERATOR=cpu: the CPU build although "
                                           "detection found cuda13")
  tpu_without_tpu = detect_with(tmp_path, SIMCLR_ACCELERATOR="tpu")
  assert tpu_without_tpu.accelerator == "tpu"
  assert "JAX will not find a tpu here" in tpu_without_tpu.warnings[0]
  with pytest.raises(doctor.DoctorError, match=r"SIMCLR_ACCELERATOR='cuda11' is not one of "
                                               r"cpu, cuda12, cuda13, tpu"):
    detect_with(tmp_path, SIMCLR_ACCELERATOR="cuda11")


def test_requirement_keeps_requirements_txt_range_which_admits_jax_0_10_and_0_11():
  requirements = {a: doctor.jax_requirement(a) for a in doctor.ACCELERATORS}
  assert requirements["cpu"].startswith("jax>=") and "[" not in requirements["cpu"]
  for accelerator in ("cuda12", "cuda13", "tpu"):
    assert requirements[accelerator].startswith(f"jax[{accelerator}]")
  specifier = SpecifierSet(requirements["cpu"].removeprefix("jax"))
  assert all(requirements[a].endswith(str(requirements["cpu"].removeprefix("jax")))
             for a in doctor.ACCELERATORS)
  # What CI resolves here and what GPU/TPU images bring (jax 0.11.2 on the H200 image).
  for version in ("0.10.2", "0.11.0", "0.11.2"):
    assert version in specifier, (version, specifier)
  # The TPU verb installs through setup (same range), no pin of its own.
  proc = subprocess.run(["bash", "launch.sh", "tpu", "my-tpu", "us-central2-b", "cfg.py",
                         "gs://b/run", "--dry_run"], capture_output=True, text=True,
                        cwd=REPO_ROOT, timeout=30)
  assert proc.returncode == 0, proc.stderr
  remote = shlex.split(proc.stdout.strip().splitlines()[-1])[-1]  # the --command argument
  assert remote.startswith("cd ~/simclr_jax && SIMCLR_ACCELERATOR=tpu ./launch.sh setup && ")
  assert "jax[tpu]" not in remote


def run_doctor_cli(args, path, **environ) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k != "SIMCLR_ACCELERATOR"}
  env.update(PATH=path, PYTHONPATH=str(REPO_ROOT), **environ)
  return subprocess.run([sys.executable, "-m", "simclr_jax.doctor", *args], capture_output=True,
                        text=True, cwd=REPO_ROOT, env=env, timeout=60)


def test_cli_setup_plan_and_bad_override(tmp_path):
  bin_dir = fake_nvidia_smi(tmp_path / "bin", query="0, NVIDIA H100, 580.82.07, 9.0, 81559\n",
                            header_text=header("580.82.07", "13.0"))
  path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
  plan = run_doctor_cli(["--setup_plan"], path)
  assert plan.returncode == 0, plan.stderr
  assert plan.stdout.split() == ["cuda13", doctor.jax_requirement("cuda13")]
  assert "[setup] accelerator cuda13: 1 x NVIDIA H100, driver 580.82.07 (CUDA 13.0)" in plan.stderr
  report = json.loads(run_doctor_cli(["--json", "--no_jax"], path).stdout)
  assert report["accelerator"] == "cuda13" and report["nvidia"]["cuda_version"] == "13.0"
  assert report["jax_requirement"] == doctor.jax_requirement("cuda13")
  bad = run_doctor_cli(["--setup_plan"], path, SIMCLR_ACCELERATOR="cuda11")
  assert bad.returncode == 2 and bad.stdout == ""
  assert bad.stderr.strip().splitlines() == [
      "error: SIMCLR_ACCELERATOR='cuda11' is not one of cpu, cuda12, cuda13, tpu (or auto / "
      "unset to detect the accelerator)"]


def test_launch_setup_reinstalls_when_the_accelerator_changes(tmp_path):
  """launch.sh setup against a venv whose pip only logs: the stamp holds the accelerator."""
  venv, pip_log, site = tmp_path / "venv", tmp_path / "pip.log", tmp_path / "site"
  (venv / "bin").mkdir(parents=True)
  shim = venv / "bin" / "python"
  shim.write_text(f'#!/bin/bash\nif [[ "$1 $2" == "-m pip" ]]; then echo "${{*:3}}" >> {pip_log}; '
                  f'exit 0; fi\nexec {sys.executable} "$@"\n')
  shim.chmod(0o755)
  # An installed CUDA 13 plugin, as importlib.metadata sees it.
  dist_info = site / "jax_cuda13_plugin-0.11.2.dist-info"
  dist_info.mkdir(parents=True)
  (dist_info / "METADATA").write_text(
      "Metadata-Version: 2.1\nName: jax-cuda13-plugin\nVersion: 0.11.2\n")

  def setup(accelerator):
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    env.update(SIMCLR_VENV=str(venv), SIMCLR_ACCELERATOR=accelerator, PYTHONPATH=str(site))
    proc = subprocess.run(["bash", "launch.sh", "setup"], capture_output=True, text=True,
                          cwd=REPO_ROOT, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return pip_log.read_text().splitlines() if pip_log.exists() else []

  assert setup("cuda13") == [f"install -q -r requirements.txt {doctor.jax_requirement('cuda13')}"]
  assert len(setup("cuda13")) == 1  # unchanged: no pip at all
  assert setup("cpu")[1:] == ["uninstall -q -y jax-cuda13-plugin",
                              f"install -q -r requirements.txt {doctor.jax_requirement('cpu')}"]
  # Back and forth: every switch installs again (an earlier install for that accelerator
  # no longer holds) and removes the other build's plugins.
  assert setup("cuda13")[3:] == [
      f"install -q -r requirements.txt {doctor.jax_requirement('cuda13')}"]
  assert setup("cpu")[4:] == ["uninstall -q -y jax-cuda13-plugin",
                              f"install -q -r requirements.txt {doctor.jax_requirement('cpu')}"]


def test_train_step_runs_on_the_detected_accelerator():
  """A real pmapped train step on JAX's default backend is on the accelerator doctor found."""
  detection = doctor.detect()
  forced = os.environ.get("SIMCLR_TEST_DEFAULT_BACKEND") == "1"  # run it on CPU-only machines too
  if detection.accelerator == "cpu" and not forced:
    pytest.skip(f"no accelerator detected ({detection.reason}); the CPU is tested elsewhere")
  if USER_JAX_PLATFORMS:
    pytest.skip(f"JAX_PLATFORMS={USER_JAX_PLATFORMS} was set by the user")
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "XLA_FLAGS")}
  env["PYTHONPATH"] = str(REPO_ROOT)
  proc = subprocess.run(
      [sys.executable, "experiments/benchmark.py", "--framework", "jax", "--model", "resnet_tiny",
       "--image_size", "32", "--per_device_batch", "4", "--steps", "1", "--warmup", "1"],
      capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  expected = doctor.JAX_PLATFORM[detection.accelerator]
  why = doctor.runtime_warnings(detection, {"importable": True, "backend": result["backend"]})
  assert (result["backend"], result["platform"]) == (expected, expected), (
      f"doctor detected {detection.accelerator} ({detection.reason}) but the train step ran "
      f"on {result['backend']} ({result['device']}): {why}")
  assert result["final_loss"] == result["final_loss"]  # finite, not NaN
