"""napari-instanno: box one instance, get an editable polygon for every similar one."""

from .errors import InstannoError
from .instances import Instances

__all__ = ["Annotator", "Instances", "InstannoError"]


def __getattr__(name: str):
    if name == "Annotator":  # lazy: importing the package must not import torch
        from .inference.annotator import Annotator

        return Annotator
    raise AttributeError(name)
