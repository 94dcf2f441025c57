"""The training engine: Slicer-free (torch, numpy, SimpleITK), usable as the ``plcl`` command."""

from .. import __version__

__all__ = ["__version__"]
