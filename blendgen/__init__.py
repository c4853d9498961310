"""blendgen: offline generation of categorically-clustered blended segmentation data.

Pipeline (one direction):  dataset -> build-clusters -> mix / pack -> HDF5 shards -> trainer.
"""

__version__ = "0.1.0"
