"""Evaluation of generated images with a user-ID classifier trained on the real data (see docs/evaluation.md)."""

from tinyldm.evaluation.classifier import ClassifierConfig, UserClassifier, classifier_for, embed, train_classifier
from tinyldm.evaluation.image_metrics import psnr, ssim
from tinyldm.evaluation.metrics import (
    condition_accuracy,
    frechet_distance,
    frechet_distance_gaussians,
    kid,
    precision_recall,
)
from tinyldm.evaluation.runs import evaluate_folders, evaluate_run

__all__ = ["ClassifierConfig", "UserClassifier", "classifier_for", "condition_accuracy", "embed", "evaluate_folders",
           "evaluate_run", "frechet_distance", "frechet_distance_gaussians", "kid", "precision_recall", "psnr", "ssim",
           "train_classifier"]
