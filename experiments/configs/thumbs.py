r"""SimCLR on the 600 training images of nih_thumbs (64 px ChestX-ray14, normal vs abnormal), CPU.

  python -m simclr_jax.prepare nih --manual_dir ../shared/data/nih_thumbs --data_dir runs/data \
      --image_size 64
  python -m simclr_jax.train --config experiments/configs/thumbs.py --workdir runs/thumbs/train

ResNet-18 x0.25 (128-d features), imagenet stem, 64 px, batch 64, 50 epochs = 450 steps:
about 85 s on 2 quiet CPU cores (~700 views/s). Pretrains on the train split only (no
validation/test images, no labels). CLAHE (contrast-limited local histogram equalisation) on
half of the views is the one augmentation change that helped here.

`experiments/thumbs_table.sh` runs it with the supervised baseline and the fair random init
(same network, zero_init_residual=False) over seeds 0-2 and prints the comparison (test split,
normal vs abnormal, mean ± sd). Measured (BENCHMARKS.md, "The seed's table on real chest
X-rays"): with the projection head's output as features, linear AUROC 0.651 ± 0.013 vs
0.509 ± 0.025 for random init, kNN AUROC 0.644 ± 0.011 vs 0.547 ± 0.028, clustering accuracy
0.602 vs 0.542 (NMI 0.033 vs 0.005); with encoder features linear AUROC 0.604 ± 0.051 vs
0.529 ± 0.059 and kNN AUROC 0.658 ± 0.019 vs 0.574 ± 0.020. Without CLAHE: encoder linear
AUROC 0.575 ± 0.012, projection 0.625 ± 0.016. Longer training (100 epochs), crop scale
(0.2/0.4/0.8, 1), temperature 0.1/0.2/0.5, no jitter/blur, width 0.5, batch 128, lr 5e-4, the
cifar stem and pretraining on train+validation images stayed within the noise of this small
set; global equalisation (p = 0.5) was tried with seed 0 only (linear AUROC 0.61 vs 0.58).
"""
from experiments.configs import demo


def get_config():
  """The demo's network and optimiser (demo.py) on nih_thumbs at 64 px, with CLAHE."""
  config = demo.get_config()
  config.dataset = "nih_chest_xray14/thumbs64"
  config.image_size = 64
  config.num_epochs = 50
  config.eval_every_steps = 0           # no online monitor
  config.augment.clahe_prob = 0.5
  return config
