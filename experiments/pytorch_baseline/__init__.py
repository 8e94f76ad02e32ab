"""The seed's PyTorch SimCLR system, made runnable on the same prepared data as simclr_jax.

Modules:
  model.py    torchvision ResNet encoder (fc = Identity) + the seed's Linear-ReLU-Linear head.
  loss.py     the seed's NT-Xent (`NTXentLoss`, 2N x 2N similarity, temperature 0.07).
  augment.py  the seed's torchvision.transforms.v2 pipeline (ImageNet normalisation, RGB input).
  data.py     torch Dataset over the TFDS ArrayRecord data that `simclr_jax.prepare` writes.
  train.py    training loop + CLI (single process, or DDP under torchrun; AMP; channels-last).

Run: python -m experiments.pytorch_baseline.train --help
"""
