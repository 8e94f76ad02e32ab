r"""The seed's experiment: ResNet-50 on NIH ChestX-ray14 at 224 px, 100 epochs, T=0.07.

  python -m simclr_jax.prepare nih --manual_dir /data/ChestX-ray14 --data_dir /data/tfds --image_size 256
  python -m simclr_jax.train --config experiments/configs/nih_r50.py --workdir runs/nih_r50 \
      --config.data_dir=/data/tfds

Images are stored at 256 px and randomly cropped to 224 px on the accelerator.
Batch 256 global with AdamW as the seed; on one H100 use --config.dtype=bfloat16.

Augmentation as the seed's torchvision pipeline (experiments/pytorch_baseline/augment.py:
RandomResizedCrop(224, scale 0.8-1) -> HorizontalFlip -> Rotation(10) ->
ColorJitter(0.4, 0.4, 0.2, 0.1) -> RandomGrayscale(0.2) -> GaussianBlur(23, 0.1-2) ->
Normalize): jitter and blur on EVERY view (the seed has no RandomApply), brightness and
contrast in a random order per view (ColorJitter's permutation), the 23 px blur kernel at
224 px. Saturation, hue and grayscale do nothing to grey images and are left out. The
network is torchvision's random ResNet-50 (zero_init_residual=False: every block's last
BN scale starts at 1).

Remaining differences from the seed, known and kept:
  * geometry: crop, flip and rotation are one bilinear affine map on continuous crop
    boxes (torchvision: integer boxes, a bilinear resize, then the rotation of that
    output with NEAREST sampling); a rotated view's corners therefore show image content
    where the crop has some around it, instead of black fill; downscaling uses a box
    filter that follows the map (torchvision: antialiased resize).
  * arithmetic: float32 throughout; the seed's ColorJitter and blur run on uint8 tensors,
    rounding to 8-bit levels after every op (<= 1/255 per op).
  * input: one grey channel normalised by (x - 0.5) / 0.25 into a 1-channel conv1; the seed
    replicates grey to RGB and normalises each channel with ImageNet's statistics. conv1 is
    linear and followed by BatchNorm, so this is a reparametrisation, not a different task.
  * optimiser: AdamW (decoupled weight decay 1e-6, BN and biases excluded) with 10 warm-up
    epochs and cosine decay; the baseline's reading of the seed is Adam with L2 1e-6 in the
    gradient at a constant 3e-4 (experiments/pytorch_baseline/README.md).
  * several GPUs: negatives are gathered from every device and BatchNorm is global; the
    seed under DDP used each GPU's own views and per-GPU BatchNorm (one GPU: the same).
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
  config.zero_init_residual = False     # the seed's torchvision ResNet-50 (BN scales start at 1)
  config.head.kind = "mlp"              # 2048 -> 2048 -> 128
  config.head.hidden_dim = 2048
  config.head.output_dim = 128
  config.loss.temperature = 0.07
  config.loss.scale = 1.0               # the seed's NT-Xent: mean over the 2N anchors
  # The seed's view transform (see the module docstring): no RandomApply around the
  # jitter and the blur, crop scale 0.8-1, flip, rotation 10 degrees.
  config.augment.crop_scale = (0.8, 1.0)
  config.augment.flip_prob = 0.5
  config.augment.rotation_degrees = 10.0
  config.augment.brightness = 0.4
  config.augment.contrast = 0.4
  config.augment.jitter_prob = 1.0
  config.augment.jitter_order = "random"
  config.augment.blur_prob = 1.0
  config.augment.blur_sigma = (0.1, 2.0)
  config.augment.blur_kernel_fraction = 23 / 224  # the seed's 23 px kernel at 224 px
  config.optimizer.name = "adamw"
  config.optimizer.learning_rate = 3e-4
  config.optimizer.lr_scaling = "linear"
  config.optimizer.weight_decay = 1e-6
  config.optimizer.warmup_epochs = 10
  config.input.num_workers = 16
  config.checkpoint_every_steps = 2000
  config.log_every_steps = 50
  # Online kNN on 1,024 validation images against 2,048 train images every 500 steps
  # (about every 1.5 epochs at batch 256; ~0.3 % of the training time).
  config.eval_every_steps = 500
  return config
