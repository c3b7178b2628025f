"""The thin napari layer: widgets, layer conversion, reader, writer, sample data.

``FindSimilarWidget`` (the dock widget, drivable from code) is exported here, imported on first use.

Importing triton (torch's kernel compiler, which torchvision pulls in) after napari has made an
OpenGL context crashes the process where OpenGL runs on Mesa (two LLVM copies in one process).
Our inference never compiles kernels, so inside napari triton is hidden unless already loaded.
"""

import sys

if "triton" not in sys.modules:
    sys.modules["triton"] = None  # `import triton` now raises ImportError; torch copes with that


__all__ = ["FindSimilarWidget"]


def __getattr__(name: str) -> type:
    if name == "FindSimilarWidget":
        from .widgets import FindSimilarWidget

        return FindSimilarWidget
    raise AttributeError(name)
