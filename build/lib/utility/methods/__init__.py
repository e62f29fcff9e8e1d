"""Training methods the engine runs: supervised (classification, segmentation) and self-supervised."""
