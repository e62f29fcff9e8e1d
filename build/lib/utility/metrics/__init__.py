"""Split-level metrics (classification, segmentation) and run summaries."""
