"""What every process needs around the maths: distributed start-up, the persistent
compilation cache, progress lines for batch jobs, and the accelerator doctor.

Importing this package imports nothing: `python -m simclr_jax.doctor --setup_plan` runs
with the standard library only, before JAX is installed.
"""
