"""napari-instanno: box one instance, get an editable polygon for every similar one."""

from .errors import InstannoError

__all__ = ["Annotator", "Instances", "InstannoError"]


def __getattr__(name: str):
    # lazy: importing the package (the CLI does, before it checks its arguments) must not import
    # torch, nor shapely / scikit-image
    if name == "Annotator":
        from .inference.annotator import Annotator

        return Annotator
    if name == "Instances":
        from .instances import Instances

        return Instances
    raise AttributeError(name)
