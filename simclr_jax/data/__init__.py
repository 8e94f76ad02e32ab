"""Datasets and input pipelines.

Importing this package registers the TFDS builders 'synthetic_cxr' (procedural phantoms,
the built-in default; see synthetic_cxr.py) and 'nih_chest_xray14' (manual download;
see nih.py). Prepare them with `python -m simclr_jax.prepare`; open them through
registry.py and read them with the Grain pipelines in pipeline.py.
"""
from simclr_jax.data.nih import NihChestXray14
from simclr_jax.data.pipeline import balance_labels
from simclr_jax.data.pipeline import check_batch_size
from simclr_jax.data.registry import check_dataset_name
from simclr_jax.data.pipeline import class_frequencies
from simclr_jax.data.registry import class_names
from simclr_jax.data.pipeline import create_train_iterator
from simclr_jax.data.registry import data_source
from simclr_jax.data.pipeline import example_weights
from simclr_jax.data.registry import get_builder
from simclr_jax.data.pipeline import iterate_eval
from simclr_jax.data.registry import known_datasets
from simclr_jax.data.registry import num_examples
from simclr_jax.data.registry import prepare_command
from simclr_jax.data.pipeline import steps_per_epoch
from simclr_jax.data.pipeline import supervised_target_spec
from simclr_jax.data.pipeline import WeightedIndexSampler
from simclr_jax.data.synthetic_cxr import SyntheticCxr
