r"""CPU demo: ResNet-18 x0.25 on synthetic_cxr phantoms at 64 px, 20 epochs (~5 min on 2 cores).

  python -m simclr_jax.prepare synthetic_cxr --data_dir runs/data
  python -m simclr_jax.train --config experiments/configs/demo.py --workdir runs/demo/train

`./launch.sh demo` runs this and then the evaluator.
"""
from simclr_jax.config import default_config


def get_config():
  config = default_config()
  config.dataset = "synthetic_cxr/64"
  config.data_dir = "runs/data"
  config.image_size = 64
  config.batch_size = 64
  config.num_epochs = 20
  config.model = "resnet18"
  config.width = 0.25
  config.stem = "imagenet"
  config.zero_init_residual = True      # google-research/simclr (each block starts as identity)
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
