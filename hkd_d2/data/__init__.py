from .mapper import PedestrianDatasetMapper  # noqa: F401
