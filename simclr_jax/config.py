"""Default experiment config; the files in experiments/configs override it.

Every field is documented here once (README's config reference is generated from the
same names). Sections are nested ConfigDicts as in big_vision.
"""
import ml_collections

from simclr_jax import augment


def default_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Data.
  config.dataset = "synthetic_cxr/64"   # TFDS name[/builder config]
  config.data_dir = "runs/data"         # TFDS data_dir written by `python -m simclr_jax.prepare`
  config.train_split = "train"
  config.image_size = 64                # model input: output size of the random resized crop
  config.batch_size = 256               # GLOBAL batch (images; each yields two views)
  config.num_epochs = 100
  config.num_train_steps = -1           # > 0 overrides num_epochs
  config.input = ml_collections.ConfigDict(dict(
      num_workers=0,                    # Grain worker processes (0: decode in this process)
      prefetch_buffer_size=2,
      class_balanced=False,             # sample findings inversely to their frequency
  ))
  # Model.
  config.model = "resnet50"             # resnet18|34|50|101|152, resnet_tiny
  config.width = 1.0                    # width multiplier
  config.stem = "imagenet"              # 'imagenet' (7x7/2 + maxpool) | 'cifar' (3x3/1)
  config.dtype = "float32"              # compute dtype; parameters stay float32
  config.head = ml_collections.ConfigDict(dict(
      kind="mlp",                       # 'mlp' (seed: Dense-ReLU-Dense) | 'simclr_v2' (3 layers + BN)
      hidden_dim=-1,                    # -1: the encoder's feature dimension
      output_dim=128,
      num_layers=2,
  ))
  config.zero_init_residual = True      # each block's last BN scale starts at 0 (google-research/simclr);
                                        # False: torchvision's random network (gamma = 1)
  # Where the encoder starts (the head is always new): '' random | a torchvision state_dict
  # FILE (ImageNet) | WORKDIR (the newest complete checkpoint of a SimCLR or supervised run
  # of this project) | WORKDIR@STEP. Its params AND batch_stats are copied; the model,
  # width, stem and input channels must match.
  config.init_from = ""
  # Resolved by the trainer from init_from (never set by hand); config.json records it, and a
  # resumed run keeps it (a WORKDIR that trained further is not read again).
  config.init_source = ml_collections.ConfigDict(dict(
      kind="",                          # '' | 'torchvision' | 'workdir'
      path="",                          # absolute path of the file or run directory
      step=-1,                          # workdir: the checkpoint step copied
      sha256="",                        # workdir: of its config.json; torchvision: of the file
      objective="",                     # workdir: the objective the source run trained
  ))
  # Objective and augmentation.
  config.objective = "simclr"           # simclr (two views, NT-Xent) | supervised (one view, labels)
  config.loss = ml_collections.ConfigDict(dict(
      temperature=0.07,
      example_weights="none",           # none | inverse_frequency (per-example loss weights)
      scale=1.0,                        # multiplies the loss (2.0 = google-research/simclr's sum
                                        # of the two directions; matters under LARS)
      mask_same_patient=False,          # True: other images of an anchor's patient (anywhere in
                                        # the global batch) are not its negatives (NT-Xent
                                        # patient_ids; needs batches with 'patient_id')
  ))
  # Patient-aware positives (objective simclr; issue 19, MICLe / MedAug): with probability
  # same_patient_prob the second view of an image is made from ANOTHER image of the same
  # patient in the training split (the image itself when its patient has no other), chosen
  # from (seed, the image's position in the training stream): deterministic, resumable,
  # the same on any number of devices or processes. 0.0: plain SimCLR (two views of one image).
  config.pairs = ml_collections.ConfigDict(dict(
      same_patient_prob=0.0,
  ))
  # objective = "supervised": one view per image, a linear classifier on the encoder's
  # pooled features; sigmoid BCE when batches hold 'labels' [n, C] (multi-label, NIH
  # findings), softmax cross-entropy when they hold 'label' [n] (single-label).
  config.supervised = ml_collections.ConfigDict(dict(
      class_weights="none",             # none | inverse_frequency (per-class loss weights)
      num_classes=-1,                   # -1: from the dataset (resolved by the trainer)
      class_frequencies=(),             # (): from the training split (resolved by the trainer);
                                        # single-label: share of each class; multi-label:
                                        # fraction of images positive for each finding
      label_mode="",                    # '': the dataset's own target (above); else a label
                                        # mode of data/labels.py, e.g. 'binary:No Finding'
                                        # (normal vs abnormal): softmax over its classes,
                                        # records it drops are not trained on
      # Fine-tuning (issue 17): which labels, which parameters train.
      label_fraction=1.0,               # (0, 1]: train on a seeded PATIENT-WISE subsample of the
                                        # labelled train split (every class present keeps >= 1
                                        # positive); epochs count epochs of the subset
      subset_seed=0,                    # seeds the subsample (not config.seed: every init and
                                        # training seed can share one subset)
      freeze_encoder=False,             # True: only the classifier trains (on augmented views);
                                        # the encoder runs in eval mode (BatchNorm running
                                        # averages) and none of its variables change
      encoder_lr_multiplier=1.0,        # the encoder's updates x this (0: its parameters stay,
                                        # its BatchNorm statistics still update)
      select_by_validation=0,           # N > 0: every N steps and at the end, the classifier's
                                        # AUROC on online_eval.eval_split; the best step's
                                        # checkpoint is kept (`evaluate --step best`)
      # Resolved by the trainer: the subset trained on (config.json records it).
      subset=ml_collections.ConfigDict(dict(
          num_images=-1, num_patients=-1,
          class_names=(),               # the target's classes (multi-label: the findings)
          positives=(),                 # images per class in the subset
          classes_without_positives=(), # no positive in the labelled split: cannot be learnt
          ids_sha256="",                # sha256 of dataset, split and the record indices
      )),
  ))
  config.augment = augment.default_config()
  # Optimisation.
  config.optimizer = ml_collections.ConfigDict(dict(
      name="adamw",                     # lars | adamw | adam | sgd
      learning_rate=3e-4,               # base rate, scaled by lr_scaling
      lr_scaling="none",                # linear (lr*B/256) | sqrt (lr*sqrt(B)) | none
      weight_decay=1e-6,
      momentum=0.9,                     # sgd / lars
      b1=0.9,                           # adam / adamw
      b2=0.999,
      warmup_epochs=10.0,
      warmup_steps=-1,                  # >= 0 overrides warmup_epochs
      trust_coefficient=0.001,          # lars
  ))
  # Online monitoring: cheap evaluators on held-out data while training (never changes
  # the trained weights).
  config.eval_every_steps = 0           # 0: off; else run config.online_eval every N steps
  config.online_eval = ml_collections.ConfigDict(dict(
      # {evaluator: settings}, as `python -m simclr_jax.evaluate` names and builds them
      # (simclr_jax.evaluation.from_config): knn (accuracy + AUROC) always; patient_shortcut
      # (same-patient nearest neighbours vs chance, on the kNN's features: nearly free);
      # clustering (k-means NMI) optional, e.g. "clustering": {"n_init": 1}.
      evaluators={"knn": {"k": 20, "temperature": 0.07}, "patient_shortcut": {}},
      train_split="train",              # kNN memory bank
      eval_split="validation",          # queries
      max_train_examples=2048,
      max_eval_examples=1024,
      batch_size=256,
  ))
  # Bookkeeping.
  config.seed = 0
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.log_every_steps = 50
  config.progress_bar = True
  config.stop_at_step = -1              # > 0: save and exit after this step (job time limits)
  config.stop_grace_seconds = 90.0      # after SIGTERM/Ctrl-C: longest wait for a save, then exit
  config.async_checkpointing = True     # save in the background while training continues
  config.compilation_cache = True       # persistent XLA compilation cache (restarts skip compiling)
  config.compilation_cache_dir = ""     # "" = $SIMCLR_COMPILATION_CACHE or ~/.cache/simclr_jax/xla
  return config


def with_defaults(config) -> ml_collections.ConfigDict:
  """A copy of `config` in which every field of `default_config()` it lacks has its default.

  For code that also takes configs with fields missing: a workdir's config.json from an
  earlier version, a section given as a plain dict, a test's minimal ConfigDict. Fields
  the defaults do not have are kept; `config` itself is not changed.
  """
  def merge(defaults: dict, given: dict) -> dict:
    merged = dict(defaults)
    for name, value in given.items():
      if isinstance(value, dict) and isinstance(defaults.get(name), dict):
        value = merge(defaults[name], value)
      merged[name] = value
    return merged

  given = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
  return ml_collections.ConfigDict(merge(default_config().to_dict(), given))
