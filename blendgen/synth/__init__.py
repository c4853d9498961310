"""Made-up datasets for demos, tests and CPU smoke runs: a miniature of PASCAL VOC 2012 and a
salient-object set drawn from the same scenes.

``model`` (the generative model as data) -> ``shapes`` (placement, outlines) -> ``render`` (one
image and its labels) -> ``voc`` / ``saliency`` (the two sets on disk; ``sets``: what they share).
"""
