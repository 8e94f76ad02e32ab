"""Datasets and input pipelines.

Importing this package registers the TFDS builders 'synthetic_cxr' (procedural phantoms,
the built-in default; see synthetic_cxr.py) and 'nih_chest_xray14' (manual download;
see nih.py). Your own images are 'folder/NAME/SIZE', 'csv/NAME/SIZE' and
'medmnist/NAME/SIZE' (own_data.py; read from their prepared folders, not registered). Prepare them with `python -m simclr_jax.prepare`; open them through
registry.py and read them with the Grain pipelines in pipeline.py.
"""
from simclr_jax.data.nih import NihChestXray14
from simclr_jax.data.pipeline import balance_labels
from simclr_jax.data.pipeline import check_batch_size
from simclr_jax.data.registry import check_dataset_name
from simclr_jax.data.registry import check_labelled as check_labelled
from simclr_jax.data.pipeline import check_labels_needed as check_labels_needed
from simclr_jax.data.registry import describe_known_datasets as describe_known_datasets
from simclr_jax.data.registry import describe_own_datasets as describe_own_datasets
from simclr_jax.data.pipeline import class_frequencies
from simclr_jax.data.registry import class_names
from simclr_jax.data.pipeline import create_train_iterator
from simclr_jax.data.registry import data_source
from simclr_jax.data.pipeline import example_weights
from simclr_jax.data.registry import get_builder
from simclr_jax.data.pipeline import iterate_eval
from simclr_jax.data.pipeline import patient_index as patient_index
from simclr_jax.data.registry import known_datasets
from simclr_jax.data.registry import num_examples
from simclr_jax.data.registry import prepare_command
from simclr_jax.data.pipeline import num_train_examples
from simclr_jax.data.pipeline import steps_per_epoch
from simclr_jax.data.pipeline import supervised_target_spec
from simclr_jax.data.pipeline import WeightedIndexSampler
from simclr_jax.data.synthetic_cxr import SyntheticCxr
