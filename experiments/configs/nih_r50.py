r"""The seed's experiment: ResNet-50 on NIH ChestX-ray14 at 224 px, 100 epochs, T=0.07.

  python -m simclr_jax.prepare nih --manual_dir /data/ChestX-ray14 --data_dir /data/tfds --image_size 256
  python -m simclr_jax.train --config experiments/configs/nih_r50.py --workdir runs/nih_r50 \
      --config.data_dir=/data/tfds

Images are stored at 256 px and randomly cropped to 224 px on the accelerator.
Batch 256 global with AdamW as the seed; on one H100 use --config.dtype=bfloat16.
"""
from simclr_jax.config import default_config


def get_config():
  config = default_config()
  config.dataset = "nih_chest_xray14/256"
  config.data_dir = "~/tensorflow_datasets"
  config.image_size = 224
  config.batch_size = 256
  config.num_epochs = 100
  config.model = "resnet50"
  config.width = 1.0
  config.head.kind = "mlp"              # 2048 -> 2048 -> 128
  config.head.hidden_dim = 2048
  config.head.output_dim = 128
  config.loss.temperature = 0.07
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 3e-4
  config.optimizer.lr_scaling = "linear"
  config.optimizer.weight_decay = 1e-6
  config.optimizer.warmup_epochs = 10
  config.input.num_workers = 16
  config.checkpoint_every_steps = 2000
  config.log_every_steps = 50
  return config
