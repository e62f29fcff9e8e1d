"""Evaluation protocols and explanations of trained models (``pkgs/Analysis/analyze.py``).

- :mod:`.source`: what is analysed (a run, or weights + task) and its data, checked before writing;
- :mod:`.features`: pooled embeddings (cached .npz) and per-block features;
- :mod:`.knn`, :mod:`.probe`, :mod:`.metrics`: kNN and linear probes, scored with the task's metrics;
- :mod:`.evaluate`: any weights on any split with the task's own method (predictions, metrics);
- :mod:`.curves`: ROC/PR, precision at recall, calibration, confusion;
- :mod:`.gradcam`: class activation maps (the ``grad-cam`` package);
- :mod:`.cka`: minibatch linear CKA; :mod:`.layers`: L2 per block, importance, layer-wise kNN;
- :mod:`.lrfind`: the LR range test; :mod:`.plots`, :mod:`.outputs`: figures and CSV files;
- :mod:`.cli` and the ``cmd_*`` modules: the commands.
"""
