r"""The SimCLR-paper recipe on NIH ChestX-ray14: LARS, global batch 4096, T=0.1, 3-layer head.

  python -m simclr_jax.train --config experiments/configs/nih_r50_simclr.py \
      --workdir gs://bucket/runs/nih_r50_simclr --config.data_dir=gs://bucket/tfds

Meant for a TPU pod slice or a multi-node GPU cluster (see ./launch.sh tpu|slurm).
Learning rate 0.3 * B / 256 (linear rule), 10 warm-up epochs, weight decay 1e-6,
BN and biases excluded from weight decay and LARS adaptation (Chen et al., 2020).
"""
from simclr_jax.config import default_config


def get_config():
  config = default_config()
  config.dataset = "nih_chest_xray14/256"
  config.data_dir = "~/tensorflow_datasets"
  config.image_size = 224
  config.batch_size = 4096
  config.num_epochs = 100
  config.model = "resnet50"
  config.dtype = "bfloat16"
  config.head.kind = "simclr_v2"
  config.head.hidden_dim = 2048
  config.head.output_dim = 128
  config.head.num_layers = 3
  config.loss.temperature = 0.1
  config.optimizer.name = "lars"
  config.optimizer.learning_rate = 0.3
  config.optimizer.lr_scaling = "linear"
  config.optimizer.weight_decay = 1e-6
  config.optimizer.momentum = 0.9
  config.optimizer.warmup_epochs = 10
  config.input.num_workers = 16
  config.checkpoint_every_steps = 1000
  return config
