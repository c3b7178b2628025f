"""The thin napari layer: widgets, layer conversion, reader, writer, sample data.

Importing triton (torch's kernel compiler, which torchvision pulls in) after napari has made an
OpenGL context crashes the process where OpenGL runs on Mesa (two LLVM copies in one process).
Our inference never compiles kernels, so inside napari triton is hidden unless already loaded.
"""

import sys

if "triton" not in sys.modules:
    sys.modules["triton"] = None  # `import triton` now raises ImportError; torch copes with that
