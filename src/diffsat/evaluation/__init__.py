"""Sample-quality evaluation: FID, KID, precision/recall, memorisation, multi-scale SWD, and a digit classifier.

Feature-based metrics (FID, KID, precision/recall, memorisation) take ``(N, D)`` feature arrays (numpy or
torch), e.g. the 128-d penultimate features of :class:`DigitClassifier` for MNIST, or flattened pixels.
SWD works on images ``(N, C, H, W)`` in ``[-1, 1]`` directly.
"""

from diffsat.evaluation.classifier import (
    ClassifierError,
    DigitClassifier,
    default_classifier_path,
    digit_metrics,
    load_classifier,
    to_classifier_input,
    train_classifier,
)
from diffsat.evaluation.fid import feature_stats, fid_from_features, frechet_distance
from diffsat.evaluation.kid import kernel_inception_distance
from diffsat.evaluation.memorisation import memorisation_report, nearest_neighbour_distances, save_closest_pairs_figure
from diffsat.evaluation.prdc import precision_recall
from diffsat.evaluation.swd import SWDResult, laplacian_pyramid, sliced_wasserstein_distance

__all__ = [
    "ClassifierError",
    "DigitClassifier",
    "SWDResult",
    "default_classifier_path",
    "digit_metrics",
    "feature_stats",
    "fid_from_features",
    "frechet_distance",
    "kernel_inception_distance",
    "laplacian_pyramid",
    "load_classifier",
    "memorisation_report",
    "nearest_neighbour_distances",
    "precision_recall",
    "save_closest_pairs_figure",
    "sliced_wasserstein_distance",
    "to_classifier_input",
    "train_classifier",
]
