"""Pedestrian data: readers of the real formats, the synthetic generator, catalog registration."""
from . import caltech, citypersons, crowdhuman, ecp, pedestrian_json, synthetic  # noqa: F401
from . import register  # noqa: F401  (registers the built-in data set names)
from .caltech import SeqFile, prepare_caltech, read_bbgt, read_vbb, write_seq, write_vbb
from .citypersons import load_citypersons, read_citypersons_mat
from .crowdhuman import load_crowdhuman, read_odgt
from .ecp import load_ecp, read_ecp_frame
from .mapper import PedestrianDatasetMapper
from .pedestrian_json import load_pedestrian_json, save_pedestrian_json
from .register import register_pedestrian_dataset
from .synthetic import SyntheticConfig, generate_synthetic

__all__ = [
    "PedestrianDatasetMapper",
    "SeqFile",
    "SyntheticConfig",
    "generate_synthetic",
    "load_citypersons",
    "load_crowdhuman",
    "load_ecp",
    "load_pedestrian_json",
    "prepare_caltech",
    "read_bbgt",
    "read_citypersons_mat",
    "read_ecp_frame",
    "read_odgt",
    "read_vbb",
    "register_pedestrian_dataset",
    "save_pedestrian_json",
    "write_seq",
    "write_vbb",
]
