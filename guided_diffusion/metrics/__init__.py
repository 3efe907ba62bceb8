"""Offline generative-model metrics: feature networks (FID Inception, tiny test nets), statistics (FID,
IS, precision/recall, class accuracy), and ADM-style evaluation of npz batches."""

from .inception import (INCEPTION_FILE_NAMES, FeatureNet, FIDInceptionV3, InceptionFeatures, TinyFeatureNet,
                        find_inception_weights, load_feature_net, tf1_bilinear_resize)
from .stats import (FeatureStats, class_accuracy, frechet_distance, inception_score, manifold_radii,
                    precision_recall)

__all__ = ["INCEPTION_FILE_NAMES", "FeatureNet", "FIDInceptionV3", "InceptionFeatures", "TinyFeatureNet",
           "find_inception_weights", "load_feature_net", "tf1_bilinear_resize", "FeatureStats", "class_accuracy",
           "frechet_distance", "inception_score", "manifold_radii", "precision_recall"]
