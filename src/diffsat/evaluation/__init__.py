"""Sample-quality evaluation: FID, KID, precision/recall, memorisation, multi-scale SWD, and a digit classifier.

Feature-based metrics (FID, KID, precision/recall, memorisation) take ``(N, D)`` feature arrays (numpy or
torch), e.g. the 128-d penultimate features of :class:`DigitClassifier` for MNIST, or flattened pixels.
SWD works on images ``(N, C, H, W)`` in ``[-1, 1]`` directly. :mod:`~diffsat.evaluation.image_sets` loads the
sets to compare, :mod:`~diffsat.evaluation.suite` runs the whole suite with real-data baselines (``diffsat
evaluate``), :mod:`~diffsat.evaluation.inception` is the optional FID Inception network (user-supplied
weights), and :mod:`~diffsat.evaluation.during_training` gives cheap numbers to log while training.
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
from diffsat.evaluation.suite import EvalSettings, Evaluation, Metric, evaluate
from diffsat.evaluation.during_training import make_training_evaluator
from diffsat.evaluation.fid import feature_stats, fid_from_features, frechet_distance
from diffsat.evaluation.image_sets import (
    EvaluationError,
    ImageSet,
    load_real,
    load_samples,
)
from diffsat.evaluation.inception import FIDInceptionV3, InceptionError, load_inception
from diffsat.evaluation.kid import kernel_inception_distance
from diffsat.evaluation.memorisation import (
    memorisation_report,
    nearest_neighbour_distances,
    save_closest_pairs_figure,
)
from diffsat.evaluation.knn_precision_recall import precision_recall
from diffsat.evaluation.swd import (
    SWDResult,
    laplacian_pyramid,
    sliced_wasserstein_distance,
)

__all__ = [
    "ClassifierError",
    "DigitClassifier",
    "EvalSettings",
    "Evaluation",
    "EvaluationError",
    "FIDInceptionV3",
    "ImageSet",
    "InceptionError",
    "Metric",
    "SWDResult",
    "default_classifier_path",
    "digit_metrics",
    "evaluate",
    "feature_stats",
    "fid_from_features",
    "frechet_distance",
    "kernel_inception_distance",
    "laplacian_pyramid",
    "load_classifier",
    "load_inception",
    "load_real",
    "load_samples",
    "make_training_evaluator",
    "memorisation_report",
    "nearest_neighbour_distances",
    "precision_recall",
    "save_closest_pairs_figure",
    "sliced_wasserstein_distance",
    "to_classifier_input",
    "train_classifier",
]
