"""Command-line entry point: `python -m simclr_jax.doctor [--json|--brief|--setup_plan ...]`.

The doctor itself lives in `simclr_jax/runtime/doctor.py` (standard library only until it
reports the JAX runtime).
"""
import sys

from simclr_jax.runtime.doctor import main

if __name__ == "__main__":
  sys.exit(main())
