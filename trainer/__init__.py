"""trainer: the two-branch source-separation network trained on blendgen shards."""
