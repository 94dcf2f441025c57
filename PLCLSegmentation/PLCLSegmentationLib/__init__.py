"""PLCLSegmentation: semi-supervised segmentation from one or two annotated volumes.

``engine`` trains and applies the model and never imports Slicer, Qt or VTK; the other modules of
this package connect it to 3D Slicer.
"""

__version__ = "0.1.0"
