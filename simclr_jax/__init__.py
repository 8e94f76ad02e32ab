"""simclr_jax: SimCLR self-supervised pretraining for chest X-rays in JAX/Flax."""

__version__ = "0.1.0"
