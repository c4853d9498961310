"""The bottom of the pipeline: labelled datasets as they ship, read behind one small interface.

``files`` (images, label PNGs, id lists; DatasetError) -> ``classes`` (class sets, palettes, label
maps) -> ``base`` (the Reader interface) -> one module per family (``voc``, ``coco``, ``folder``,
``saliency``) -> ``registry`` (every kind by name; ``open_reader``). Nothing here imports the
layers above (shards, generation).
"""
