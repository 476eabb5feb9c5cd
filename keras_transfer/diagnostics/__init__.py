"""Measures and advice over everything below: transferability scores (on feature arrays
in `feature_scores`, of backbones and blocks in `transfer_scores`), forgetting
reports, training reports and plots (multilabel and regression ones in `label_reports`),
the advisor (`recipes`) and the from-scratch baseline (`scratch`).
"""

from keras_transfer.diagnostics import feature_scores
from keras_transfer.diagnostics import forgetting
from keras_transfer.diagnostics import label_reports
from keras_transfer.diagnostics import recipes
from keras_transfer.diagnostics import reports
from keras_transfer.diagnostics import scratch
from keras_transfer.diagnostics import transfer_scores
from keras_transfer.diagnostics.feature_scores import DEFAULT_MIN_EXAMPLES_PER_CLASS
from keras_transfer.diagnostics.feature_scores import class_indices
from keras_transfer.diagnostics.feature_scores import h_score
from keras_transfer.diagnostics.feature_scores import leep
from keras_transfer.diagnostics.feature_scores import logme
from keras_transfer.diagnostics.forgetting import MIN_PROBE_IMAGES
from keras_transfer.diagnostics.forgetting import ForgettingReport
from keras_transfer.diagnostics.forgetting import diagnostics_summary
from keras_transfer.diagnostics.forgetting import forgetting_report
from keras_transfer.diagnostics.forgetting import linear_cka
from keras_transfer.diagnostics.forgetting import pretrained_copy
from keras_transfer.diagnostics.forgetting import source_model
from keras_transfer.diagnostics.label_reports import average_precision
from keras_transfer.diagnostics.label_reports import best_f1_thresholds
from keras_transfer.diagnostics.label_reports import evaluate_outputs
from keras_transfer.diagnostics.label_reports import multilabel_report
from keras_transfer.diagnostics.label_reports import plot_label_f1
from keras_transfer.diagnostics.label_reports import plot_predicted_vs_true
from keras_transfer.diagnostics.label_reports import predict_outputs
from keras_transfer.diagnostics.label_reports import regression_report
from keras_transfer.diagnostics.recipes import ADVISOR_RULE
from keras_transfer.diagnostics.recipes import Recipe
from keras_transfer.diagnostics.recipes import recommend_recipe
from keras_transfer.diagnostics.recipes import recommend_training_plan
from keras_transfer.diagnostics.recipes import size_scaled_plan
from keras_transfer.diagnostics.reports import classification_report
from keras_transfer.diagnostics.reports import confusion_matrix
from keras_transfer.diagnostics.reports import format_report
from keras_transfer.diagnostics.reports import plot_confusion_matrix
from keras_transfer.diagnostics.reports import plot_training_curves
from keras_transfer.diagnostics.reports import predict_labels
from keras_transfer.diagnostics.scratch import DEFAULT_SCRATCH_BN_MOMENTUM
from keras_transfer.diagnostics.scratch import NegativeTransferWarning
from keras_transfer.diagnostics.scratch import check_negative_transfer
from keras_transfer.diagnostics.scratch import fit_scratch_baseline
from keras_transfer.diagnostics.scratch import scratch_model
from keras_transfer.diagnostics.transfer_scores import METHODS
from keras_transfer.diagnostics.transfer_scores import SOURCE_PROBABILITIES
from keras_transfer.diagnostics.transfer_scores import RankedCandidate
from keras_transfer.diagnostics.transfer_scores import block_features
from keras_transfer.diagnostics.transfer_scores import rank_backbones
from keras_transfer.diagnostics.transfer_scores import source_head_from_model
from keras_transfer.diagnostics.transfer_scores import transferability

__all__ = [
    "reports",
    "label_reports",
    "feature_scores",
    "transfer_scores",
    "forgetting",
    "recipes",
    "scratch",
    "classification_report",
    "confusion_matrix",
    "format_report",
    "plot_confusion_matrix",
    "plot_training_curves",
    "predict_labels",
    "average_precision",
    "best_f1_thresholds",
    "evaluate_outputs",
    "multilabel_report",
    "plot_label_f1",
    "plot_predicted_vs_true",
    "predict_outputs",
    "regression_report",
    "DEFAULT_MIN_EXAMPLES_PER_CLASS",
    "class_indices",
    "h_score",
    "leep",
    "logme",
    "METHODS",
    "RankedCandidate",
    "SOURCE_PROBABILITIES",
    "block_features",
    "rank_backbones",
    "source_head_from_model",
    "transferability",
    "MIN_PROBE_IMAGES",
    "ForgettingReport",
    "diagnostics_summary",
    "forgetting_report",
    "linear_cka",
    "pretrained_copy",
    "source_model",
    "DEFAULT_SCRATCH_BN_MOMENTUM",
    "NegativeTransferWarning",
    "ADVISOR_RULE",
    "Recipe",
    "check_negative_transfer",
    "fit_scratch_baseline",
    "recommend_recipe",
    "recommend_training_plan",
    "scratch_model",
    "size_scaled_plan",
]
