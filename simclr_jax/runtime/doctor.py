"""Which accelerator this machine has, which JAX build it needs, and what JAX really uses.

  python -m simclr_jax.doctor            # human-readable report
  python -m simclr_jax.doctor --json     # the same as one JSON object
  ./launch.sh doctor

Detection imports nothing beyond the standard library, so `launch.sh setup` runs it in a
fresh venv before JAX is installed:

  * `SIMCLR_ACCELERATOR=cpu|cuda12|cuda13|tpu` wins (`auto` or unset: detect);
  * a Cloud TPU VM: TPU chips on the PCI bus (Google's vendor id), or /dev/accel* nodes;
  * an NVIDIA GPU: `nvidia-smi`. The driver decides the CUDA build of JAX: JAX's CUDA 13
    wheels need driver >= 580 and compute capability >= 7.5, its CUDA 12 wheels driver >= 525
    and compute capability >= 5.2 (JAX installation guide). The "CUDA Version" nvidia-smi
    prints is the newest CUDA the driver supports; the driver version is the fallback;
  * otherwise the CPU build.

The report also names the pip requirement the choice implies (the jax range of
requirements.txt with the matching extra, e.g. `jax[cuda13]>=0.10,<0.12`), the backend and
devices JAX actually uses when it is importable, and the versions of the packages that
matter.
"""
import argparse
import dataclasses
import glob
import importlib.metadata
import json
import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

ACCELERATORS = ("cpu", "cuda12", "cuda13", "tpu")
OVERRIDE_VARIABLE = "SIMCLR_ACCELERATOR"
# JAX installation guide (NVIDIA GPU): driver >= 525 for CUDA 12 and >= 580 for CUDA 13 on
# Linux; CUDA 13 dropped GPUs below compute capability 7.5, CUDA 12 supports 5.2 and newer.
MIN_DRIVER_MAJOR = {"cuda12": 525, "cuda13": 580}
MIN_COMPUTE_CAPABILITY = {"cuda12": (5, 2), "cuda13": (7, 5)}
# The platform name jax.default_backend() reports for each accelerator choice.
JAX_PLATFORM = {"cpu": "cpu", "cuda12": "gpu", "cuda13": "gpu", "tpu": "tpu"}
# Packages that make one accelerator's JAX build; a venv switched to another choice must not
# keep them (JAX would load a stale plugin).
ACCELERATOR_PACKAGES = {
    "cpu": (),
    "cuda12": ("jax-cuda12-plugin", "jax-cuda12-pjrt"),
    "cuda13": ("jax-cuda13-plugin", "jax-cuda13-pjrt"),
    "tpu": ("libtpu",),
}
GOOGLE_PCI_VENDOR = "0x1ae0"
# PCI device ids of Cloud TPU chips (v3 .. v6e and later), as JAX's own hardware check lists.
TPU_PCI_DEVICES = {"0x0027": "v2/v3", "0x0056": "v4 lite", "0x005e": "v4", "0x0062": "v5p",
                   "0x0063": "v5e", "0x006f": "v6e", "0x0076": "tpu7x", "0x007c": "tpu8t",
                   "0x0083": "tpu8i"}
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
REPORTED_PACKAGES = ("jax", "jaxlib", "jax-cuda12-plugin", "jax-cuda12-pjrt",
                     "jax-cuda13-plugin", "jax-cuda13-pjrt", "libtpu", "flax", "optax",
                     "orbax-checkpoint", "grain", "tensorflow-datasets", "array-record",
                     "ml_collections", "numpy", "scikit-learn", "tensorboardX", "tensorboard",
                     "torch", "torchvision")
NVIDIA_SMI_TIMEOUT_S = 30


class DoctorError(ValueError):
  """A setting the doctor cannot act on (e.g. an unknown SIMCLR_ACCELERATOR)."""


@dataclasses.dataclass(frozen=True)
class NvidiaGpu:
  index: int
  name: str
  compute_capability: Optional[str]  # "9.0"; None where the driver cannot report it
  memory_mib: Optional[int]


@dataclasses.dataclass(frozen=True)
class NvidiaDriver:
  """What nvidia-smi said: the GPUs, the driver, or why it could not say."""
  gpus: Tuple[NvidiaGpu, ...] = ()
  driver_version: Optional[str] = None
  cuda_version: Optional[str] = None  # newest CUDA the driver supports ("13.0")
  error: Optional[str] = None         # nvidia-smi present but failing


@dataclasses.dataclass(frozen=True)
class Detection:
  """The accelerator choice and everything it was based on."""
  accelerator: str            # one of ACCELERATORS
  source: str                 # 'SIMCLR_ACCELERATOR', 'tpu', 'nvidia-smi' or 'none'
  reason: str                 # one line
  nvidia: Optional[NvidiaDriver]
  tpu_chips: int
  tpu_version: Optional[str]
  warnings: Tuple[str, ...] = ()


# ------------------------------------------------------------------------------ NVIDIA


def _run(command: Sequence[str]) -> Tuple[int, str]:
  try:
    proc = subprocess.run(list(command), capture_output=True, text=True,
                          timeout=NVIDIA_SMI_TIMEOUT_S)
  except subprocess.TimeoutExpired:
    return 124, f"timed out after {NVIDIA_SMI_TIMEOUT_S} s"
  except OSError as error:
    return 127, str(error)
  return proc.returncode, (proc.stdout if proc.returncode == 0 else
                           (proc.stderr.strip() or proc.stdout.strip()))


def _first_line(text: str) -> str:
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return lines[0] if lines else "(no output)"


def parse_gpu_query(text: str, with_compute_capability: bool
                    ) -> Tuple[List[NvidiaGpu], Optional[str]]:
  """Parses `nvidia-smi --query-gpu=index,name,driver_version[,compute_cap],memory.total
  --format=csv,noheader,nounits` (fields taken from both ends: a name may hold commas).

  Returns:
    (GPUs, driver version of the first GPU or None).
  """
  gpus, driver = [], None
  tail = 3 if with_compute_capability else 2  # driver[, compute_cap], memory after the name
  for line in text.splitlines():
    fields = [field.strip() for field in line.split(",")]
    if len(fields) < 2 + tail or not fields[0].isdigit():
      continue
    name = ", ".join(fields[1:-tail])
    capability = fields[-2] if with_compute_capability else None
    memory = fields[-1]
    gpus.append(NvidiaGpu(
        index=int(fields[0]), name=name,
        compute_capability=(capability if capability and re.fullmatch(r"\d+\.\d+", capability)
                            else None),
        memory_mib=int(memory) if memory.isdigit() else None))
    driver = driver or fields[-tail]
  return gpus, driver


def parse_cuda_version(text: str) -> Optional[str]:
  """The "CUDA Version: 13.0" of nvidia-smi's header (the newest CUDA the driver supports)."""
  match = re.search(r"CUDA Version\s*:\s*(\d+\.\d+)", text)
  return match.group(1) if match else None


def query_nvidia_smi(executable: str, run: Callable = _run) -> NvidiaDriver:
  """Asks nvidia-smi for the GPUs, the driver version and the CUDA version it supports."""
  fields = "index,name,driver_version,compute_cap,memory.total"
  rc, out = run([executable, f"--query-gpu={fields}", "--format=csv,noheader,nounits"])
  with_capability = True
  if rc != 0:  # drivers older than 510 do not know compute_cap
    rc, out = run([executable, "--query-gpu=index,name,driver_version,memory.total",
                   "--format=csv,noheader,nounits"])
    with_capability = False
  if rc != 0:
    return NvidiaDriver(error=f"nvidia-smi failed (exit {rc}): {_first_line(out)}")
  gpus, driver = parse_gpu_query(out, with_capability)
  rc, header = run([executable])
  cuda_version = parse_cuda_version(header) if rc == 0 else None
  return NvidiaDriver(gpus=tuple(gpus), driver_version=driver, cuda_version=cuda_version)


def _major(version: Optional[str]) -> Optional[int]:
  match = re.match(r"\s*(\d+)", version or "")
  return int(match.group(1)) if match else None


def _capability(text: Optional[str]) -> Optional[Tuple[int, int]]:
  if not text:
    return None
  major, minor = text.split(".")
  return int(major), int(minor)


def choose_cuda_build(nvidia: NvidiaDriver) -> Tuple[str, str, Tuple[str, ...]]:
  """The JAX CUDA build the driver and GPUs support.

  Returns:
    (accelerator, one-line reason, warnings); accelerator is 'cpu' when neither build runs.
  """
  names = ", ".join(sorted({gpu.name for gpu in nvidia.gpus}))
  driver = nvidia.driver_version or "unknown"
  cuda_major = _major(nvidia.cuda_version)
  driver_major = _major(nvidia.driver_version)
  if cuda_major is None and driver_major is not None:
    cuda_major = (13 if driver_major >= MIN_DRIVER_MAJOR["cuda13"] else
                  12 if driver_major >= MIN_DRIVER_MAJOR["cuda12"] else 11)
  capabilities = [_capability(gpu.compute_capability) for gpu in nvidia.gpus]
  known = [c for c in capabilities if c is not None]
  lowest = min(known) if known else None
  supports = (f"{len(nvidia.gpus)} x {names}, driver {driver}"
              f"{f' (CUDA {nvidia.cuda_version})' if nvidia.cuda_version else ''}"
              f"{f', compute capability {lowest[0]}.{lowest[1]}' if lowest else ''}")
  if cuda_major is None:
    return ("cpu", f"{supports}: cannot tell which CUDA the driver supports",
            (f"nvidia-smi reported no driver version; set {OVERRIDE_VARIABLE}=cuda12 or "
             f"cuda13 to install a GPU build",))
  if lowest is not None and lowest < MIN_COMPUTE_CAPABILITY["cuda12"]:
    return ("cpu", f"{supports}: too old for JAX (needs compute capability >= 5.2)",
            (f"GPU compute capability {lowest[0]}.{lowest[1]} is below 5.2: JAX cannot use "
             "it; installing the CPU build",))
  if cuda_major >= 13 and (lowest is None or lowest >= MIN_COMPUTE_CAPABILITY["cuda13"]):
    return "cuda13", f"{supports}: the driver runs CUDA 13", ()
  if cuda_major >= 12:
    why = ("the driver runs CUDA 12" if cuda_major == 12 else
           "CUDA 13 needs compute capability >= 7.5")
    return "cuda12", f"{supports}: {why}", ()
  return ("cpu", f"{supports}: the driver is too old for JAX's CUDA builds",
          (f"NVIDIA driver {driver} supports CUDA {nvidia.cuda_version or '< 12'}; JAX needs "
           f"driver >= {MIN_DRIVER_MAJOR['cuda12']} (CUDA 12) or >= "
           f"{MIN_DRIVER_MAJOR['cuda13']} (CUDA 13). Upgrade the driver; installing the CPU "
           "build for now",))


# --------------------------------------------------------------------------------- TPU


def count_tpu_chips(pci_root: str = "/sys/bus/pci/devices",
                    accel_glob: str = "/dev/accel[0-9]*") -> Tuple[int, Optional[str]]:
  """TPU chips on the PCI bus (Google vendor id + a TPU device id), else /dev/accel* nodes.

  Returns:
    (number of chips, TPU generation or None).
  """
  chips, version = 0, None
  for vendor_path in sorted(glob.glob(os.path.join(pci_root, "*", "vendor"))):
    try:
      vendor = pathlib.Path(vendor_path).read_text().strip()
      if vendor != GOOGLE_PCI_VENDOR:
        continue
      device = (pathlib.Path(vendor_path).parent / "device").read_text().strip()
    except OSError:
      continue
    if device in TPU_PCI_DEVICES:
      chips += 1
      version = TPU_PCI_DEVICES[device]
  if chips == 0:
    chips = len(glob.glob(accel_glob))  # TPU v2-v4 VMs expose /dev/accel0..N
  return chips, version


# ------------------------------------------------------------------------------ detect


def detect(environ: Optional[Mapping[str, str]] = None, pci_root: str = "/sys/bus/pci/devices",
           accel_glob: str = "/dev/accel[0-9]*", run: Callable = _run) -> Detection:
  """Decides which JAX build this machine needs.

  Args:
    environ: environment to read SIMCLR_ACCELERATOR and PATH (nvidia-smi) from; os.environ
      by default.
    pci_root, accel_glob: where TPU chips show up (tests point them at fake trees).
    run: runs a command, returns (exit code, stdout or error text).

  Returns:
    the Detection.

  Raises:
    DoctorError: SIMCLR_ACCELERATOR holds something other than auto or ACCELERATORS.
  """
  environ = os.environ if environ is None else environ
  override = environ.get(OVERRIDE_VARIABLE, "").strip().lower()
  if override not in ("", "auto") + ACCELERATORS:
    raise DoctorError(
        f"{OVERRIDE_VARIABLE}={environ.get(OVERRIDE_VARIABLE)!r} is not one of "
        f"{', '.join(ACCELERATORS)} (or auto / unset to detect the accelerator)")
  tpu_chips, tpu_version = count_tpu_chips(pci_root, accel_glob)
  executable = shutil.which("nvidia-smi", path=environ.get("PATH", os.defpath))
  nvidia = query_nvidia_smi(executable, run) if executable else None

  if tpu_chips:
    detected = ("tpu", "tpu", f"{tpu_chips} TPU chip(s){f' ({tpu_version})' if tpu_version else ''}"
                " on this VM", ())
  elif nvidia is not None and nvidia.error is None and nvidia.gpus:
    accelerator, reason, warnings = choose_cuda_build(nvidia)
    detected = (accelerator, "nvidia-smi", reason, warnings)
  elif nvidia is not None:
    problem = nvidia.error or "nvidia-smi lists no GPU"
    detected = ("cpu", "nvidia-smi", f"no usable NVIDIA GPU: {problem}",
                (f"{problem}; installing the CPU build (fix the driver, or set "
                 f"{OVERRIDE_VARIABLE}=cuda12|cuda13 to install a GPU build anyway)",))
  else:
    detected = ("cpu", "none", "no NVIDIA GPU (no nvidia-smi on PATH) and no TPU", ())

  accelerator, source, reason, warnings = detected
  if override in ACCELERATORS:
    warnings = ()
    if override == "cpu" and accelerator != "cpu":
      warnings = (f"{OVERRIDE_VARIABLE}=cpu: the CPU build although detection found "
                  f"{accelerator} ({reason})",)
    elif JAX_PLATFORM[override] != JAX_PLATFORM[accelerator]:
      warnings = (f"{OVERRIDE_VARIABLE}={override} although detection found {accelerator} "
                  f"({reason}): JAX will not find a {JAX_PLATFORM[override]} here",)
    elif override != accelerator:
      warnings = (f"{OVERRIDE_VARIABLE}={override} although the driver suggests {accelerator} "
                  f"({reason})",)
    return Detection(override, OVERRIDE_VARIABLE, f"{OVERRIDE_VARIABLE}={override}", nvidia,
                     tpu_chips, tpu_version, warnings)
  return Detection(accelerator, source, reason, nvidia, tpu_chips, tpu_version, warnings)


def jax_requirement(accelerator: str,
                    requirements_file: pathlib.Path = REPO_ROOT / "requirements.txt") -> str:
  """The pip requirement for JAX on `accelerator`: requirements.txt's jax range + the extra.

  e.g. 'jax>=0.10,<0.12' (cpu), 'jax[cuda13]>=0.10,<0.12', 'jax[tpu]>=0.10,<0.12'.
  """
  if accelerator not in ACCELERATORS:
    raise DoctorError(f"accelerator {accelerator!r} is not one of {', '.join(ACCELERATORS)}")
  specifier = ""
  if requirements_file.exists():
    for line in requirements_file.read_text().splitlines():
      match = re.match(r"^jax(?:\[[^\]]*\])?\s*([<>=!~][^#;]*)", line.strip())
      if match:
        specifier = match.group(1).replace(" ", "")
        break
  extra = "" if accelerator == "cpu" else f"[{accelerator}]"
  return f"jax{extra}{specifier}"


def package_versions(packages: Sequence[str] = REPORTED_PACKAGES) -> Dict[str, Optional[str]]:
  """Installed version of each package (None when absent), and Python's."""
  found = {"python": platform.python_version()}
  for package in packages:
    try:
      found[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      found[package] = None
  return found


def stale_packages(accelerator: str) -> List[str]:
  """Installed packages of another accelerator's JAX build (to remove when switching)."""
  wanted = set(ACCELERATOR_PACKAGES[accelerator])
  versions = package_versions(
      [name for names in ACCELERATOR_PACKAGES.values() for name in names])
  return sorted(name for name, version in versions.items()
                if name != "python" and version and name not in wanted)


def jax_runtime() -> dict:
  """What JAX uses in this process: backend, devices, or why it could not start."""
  try:
    import jax  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    return {"importable": False, "error": f"{type(error).__name__}: {error}"}
  try:
    devices = jax.devices()
    return {"importable": True, "version": jax.__version__, "backend": jax.default_backend(),
            "device_count": len(devices), "devices": [str(d) for d in devices],
            "device_kind": devices[0].device_kind,
            "jax_platforms": os.environ.get("JAX_PLATFORMS") or None}
  except Exception as error:  # pylint: disable=broad-except  # a broken plugin/driver
    return {"importable": True, "version": jax.__version__,
            "error": f"{type(error).__name__}: {_first_line(str(error))}"}


def runtime_warnings(detection: Detection, runtime: dict) -> List[str]:
  """Where JAX does not run on what was detected, one line saying why and what to do."""
  if not runtime.get("importable"):
    return ["JAX is not installed in this Python: run ./launch.sh setup"]
  if "error" in runtime:
    return [f"JAX could not start: {runtime['error']}"]
  expected = JAX_PLATFORM[detection.accelerator]
  if runtime["backend"] == expected:
    return []
  if runtime.get("jax_platforms"):
    return [f"JAX runs on {runtime['backend']} because JAX_PLATFORMS={runtime['jax_platforms']} "
            f"(detected: {detection.accelerator})"]
  return [f"JAX runs on {runtime['backend']}, not on the detected {detection.accelerator}: "
          f"install {jax_requirement(detection.accelerator)} (./launch.sh setup does)"]


def report(detection: Detection, runtime: Optional[dict]) -> dict:
  """Everything the doctor knows, JSON-ready."""
  nvidia = detection.nvidia
  result = {
      "accelerator": detection.accelerator,
      "source": detection.source,
      "reason": detection.reason,
      "jax_requirement": jax_requirement(detection.accelerator),
      "expected_jax_platform": JAX_PLATFORM[detection.accelerator],
      "nvidia": None if nvidia is None else {
          "driver_version": nvidia.driver_version, "cuda_version": nvidia.cuda_version,
          "error": nvidia.error, "gpus": [dataclasses.asdict(gpu) for gpu in nvidia.gpus]},
      "tpu": {"chips": detection.tpu_chips, "version": detection.tpu_version},
      "host": {"machine": platform.machine(), "system": platform.system(),
               "cpu_count": os.cpu_count()},
      "versions": package_versions(),
      "warnings": list(detection.warnings),
  }
  if runtime is not None:
    result["jax_runtime"] = runtime
    result["warnings"] += runtime_warnings(detection, runtime)
  return result


def format_report(result: dict) -> str:
  lines = [f"accelerator      {result['accelerator']}  ({result['source']}: {result['reason']})",
           f"pip requirement  {result['jax_requirement']}"]
  nvidia = result["nvidia"]
  if nvidia:
    for gpu in nvidia["gpus"]:
      lines.append(f"gpu {gpu['index']}            {gpu['name']}, compute capability "
                   f"{gpu['compute_capability'] or '?'}, {gpu['memory_mib'] or '?'} MiB")
    if nvidia["driver_version"]:
      lines.append(f"nvidia driver    {nvidia['driver_version']} (CUDA "
                   f"{nvidia['cuda_version'] or '?'})")
  if result["tpu"]["chips"]:
    tpu = result["tpu"]
    lines.append(f"tpu              {tpu['chips']} chip(s) {tpu['version'] or ''}")
  runtime = result.get("jax_runtime")
  if runtime is not None:
    if runtime.get("importable") and "error" not in runtime:
      forced = runtime.get("jax_platforms")
      lines.append(f"jax backend      {runtime['backend']}: {runtime['device_count']} x "
                   f"{runtime['device_kind']}" + (f" (JAX_PLATFORMS={forced})" if forced else ""))
    else:
      lines.append(f"jax backend      unavailable: {runtime.get('error')}")
  installed = {k: v for k, v in result["versions"].items() if v}
  lines.append("versions         " + ", ".join(f"{k} {v}" for k, v in installed.items()))
  for warning in result["warnings"]:
    lines.append(f"warning: {warning}")
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--json", action="store_true", help="print one JSON object")
  parser.add_argument("--no_jax", action="store_true",
                      help="do not import jax (detection and versions only)")
  parser.add_argument("--setup_plan", action="store_true",
                      help="for launch.sh: print 'ACCELERATOR REQUIREMENT' on stdout, the "
                           "reason and warnings on stderr; never imports jax")
  parser.add_argument("--stale_packages", metavar="ACCELERATOR", choices=ACCELERATORS,
                      help="for launch.sh: installed packages of other accelerators' JAX builds")
  parser.add_argument("--brief", action="store_true",
                      help="one line: the backend JAX uses (+ warnings on stderr)")
  args = parser.parse_args(argv)
  if args.stale_packages:
    print(" ".join(stale_packages(args.stale_packages)))
    return 0
  try:
    detection = detect()
  except DoctorError as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  if args.setup_plan:
    print(f"{detection.accelerator} {jax_requirement(detection.accelerator)}")
    print(f"[setup] accelerator {detection.accelerator}: {detection.reason}", file=sys.stderr)
    for warning in detection.warnings:
      print(f"[setup] warning: {warning}", file=sys.stderr)
    return 0
  runtime = None if args.no_jax else jax_runtime()
  result = report(detection, runtime)
  if args.json:
    print(json.dumps(result, indent=1))
  elif args.brief:
    if runtime and runtime.get("importable") and "error" not in runtime:
      print(f"[doctor] JAX {runtime['version']} on {runtime['backend']}: "
            f"{runtime['device_count']} x {runtime['device_kind']} "
            f"(detected {detection.accelerator}: {detection.reason})")
    for warning in result["warnings"]:
      print(f"[doctor] warning: {warning}", file=sys.stderr)
  else:
    print(format_report(result))
  return 0


if __name__ == "__main__":
  sys.exit(main())
