r"""Fine-tuning ResNet-50 on NIH ChestX-ray14 (the 14 findings): the full-scale label-efficiency row.

  python -m simclr_jax.train --config experiments/configs/nih_r50_finetune.py \
      --workdir runs/nih_finetune --config.data_dir=/data/tfds \
      --config.init_from=runs/nih_r50 --config.supervised.label_fraction=0.1
  python -m experiments.label_efficiency --config experiments/configs/nih_r50_finetune.py \
      --dataset nih_chest_xray14/256 --data_dir /data/tfds --simclr_workdir runs/nih_r50 \
      --imagenet_weights resnet50-11ad3fa6.pth --fractions 0.01,0.1,1.0 --seeds 0,1,2 \
      --out runs/nih_label_efficiency

nih_r50.py's network and augmentation (224 px crops of the 256 px images, the seed's view
transform on ONE view), objective 'supervised' on the multi-hot findings (sigmoid BCE per
finding; macro AUROC over the 14 findings, as MoCo-CXR / REFERS / MRM report), AdamW 3e-4
at batch 256, one warm-up epoch, 30 epochs of the training subset, bfloat16; the checkpoint
with the best validation AUROC (every 500 steps and at the end, on the whole validation
split: ~8.6k images held in host memory) is evaluated. Weights from torchvision
(ImageNet row) need width 1 and the imagenet stem, as here.

Time per row on one GPU, estimated (not measured in this round) from BENCHMARKS.md's
training-CLI figure for nih_r50.py on one H200: ~6,250 views/s steady (bf16, global batch
256, 12 Grain workers). A supervised step makes one view per image, so ~6,250 images/s,
assuming a view costs what a SimCLR view costs (the ResNet-50 forward/backward dominates
both); with ~78k training images (patient-wise split):
  label fraction 1.0   30 x 78k = 2.3M images:  ~6.3 min (+ ~1 min compile, validation, test)
  label fraction 0.1   ~0.6 min + ~1 min         label fraction 0.01  ~4 s + ~1 min
  frozen encoder       no backward pass through the encoder: roughly a third of the above
so one seed of scratch + SimCLR fine-tuned + frozen (+ ImageNet) over 1/10/100 % is ~25 min,
three seeds ~75 min. On an H100 expect somewhat less (slower memory); measure the first row.
An epoch of 1 % is 3 steps at batch 256 (90 steps in all): raise num_epochs for the small
fractions with --train_flags if validation AUROC is still rising at the end.
"""
from experiments.configs import nih_r50


def get_config():
  config = nih_r50.get_config()
  config.objective = "supervised"
  config.supervised.label_mode = ""             # the 14 findings, sigmoid BCE
  config.supervised.label_fraction = 1.0        # the protocol sets 0.01 / 0.1 / 1.0
  config.supervised.select_by_validation = 500
  config.dtype = "bfloat16"
  config.num_epochs = 30
  config.optimizer.learning_rate = 3e-4
  config.optimizer.lr_scaling = "linear"
  config.optimizer.warmup_epochs = 1.0
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 1
  config.eval_every_steps = 0                   # the selection scores the classifier instead
  return config
