r"""SimCLR on the 600 training images of nih_thumbs (64 px ChestX-ray14, normal vs abnormal), CPU.

  python -m simclr_jax.prepare nih --manual_dir ../shared/data/nih_thumbs --data_dir runs/data \
      --image_size 64
  python -m simclr_jax.train --config experiments/configs/thumbs.py --workdir runs/thumbs/train

ResNet-18 x0.25 (128-d features), imagenet stem, 64 px, batch 64, 50 epochs = 450 steps:
about 100 s on 2 quiet CPU cores (~650-800 views/s). Pretrains on the train split only (no
validation/test images, no labels).

Measured (seeds 0-2, test split, binary normal vs abnormal, evaluator defaults; fair random init
= the same network with zero_init_residual=False, seeds 0-4): linear AUROC 0.60 vs 0.51, kNN
accuracy 0.59 vs 0.55; patient-grouped 5-fold CV over all 1,000 images: linear AUROC 0.61 vs
0.55, kNN 0.57 vs 0.54. Clustering (k = 2) does not separate normal from abnormal for either
(accuracy 0.58-0.61 vs 0.57, NMI <= 0.035). Longer training (100 epochs), crop scale
(0.2/0.4/0.8, 1), temperature 0.1/0.2/0.5, no jitter/blur, width 0.5, batch 128, lr 5e-4, the
cifar stem and pretraining on train+validation images all stayed within the noise of this set
(see /work/plan/notes/experiment.md, BENCHMARKS.md).
"""
from simclr_jax.config import default_config


def get_config():
  config = default_config()
  config.dataset = "nih_chest_xray14/thumbs64"
  config.data_dir = "runs/data"
  config.image_size = 64
  config.batch_size = 64
  config.num_epochs = 50
  config.model = "resnet18"
  config.width = 0.25
  config.stem = "imagenet"
  config.head.hidden_dim = 512
  config.head.output_dim = 64
  config.loss.temperature = 0.1
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 2e-3
  config.optimizer.lr_scaling = "none"
  config.optimizer.weight_decay = 1e-4
  config.optimizer.warmup_epochs = 0.5
  config.checkpoint_every_steps = 100
  config.log_every_steps = 10
  config.input.num_workers = 0
  return config
