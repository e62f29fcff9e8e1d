"""Networks and weight files. ``from utility.models import get_model`` hands trained weights to other code.

- :mod:`.encoders`: encoders by name, the classifier (encoder + linear head), encoder freezing;
- :mod:`.weights`: reading weight files safely and loading them with every mismatch reported;
- :mod:`.unet`: the segmentation U-Net on the same encoders;
- :mod:`.factory`: :func:`build_network` (build, load, freeze: the one place) and :func:`get_model`.
"""
from utility.models.encoders import (TORCHVISION_ENCODERS, Classifier, FreezableEncoder, build_encoder,
                                     count_parameters, encoder_blocks)
from utility.models.factory import build_network, get_model
from utility.models.weights import load_encoder_weights, load_into_classifier, read_state_dict, split_state_dict

__all__ = ["TORCHVISION_ENCODERS", "Classifier", "FreezableEncoder", "build_encoder", "build_network",
           "count_parameters", "encoder_blocks", "get_model", "load_encoder_weights", "load_into_classifier",
           "read_state_dict", "split_state_dict"]
