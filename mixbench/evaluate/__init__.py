"""Evaluators: what a trained method (or a checkpoint that rebuilds one) is worth.

Every evaluator has one interface (:class:`Evaluator`): called with the method and the evaluation
data, it returns named metrics; its ``protocol`` says how they were produced. Top-1/top-5 accuracy
of the method's classifiers lives here; kNN, linear probing, transfer, calibration and robustness
register beside it. Results of a checkpoint's evaluation are stored in its run folder
(:mod:`mixbench.evaluate.store`).
"""

from mixbench.evaluate.base import EVALUATORS, EvalContext, Evaluator, reported_classifier
from mixbench.evaluate.calibration import Calibration, CalibrationStats, calibration_counts, reliability_diagram
from mixbench.evaluate.corruptions import CORRUPTIONS, Corruptions, corrupt
from mixbench.evaluate.features import EvalData, eval_data, extract_features
from mixbench.evaluate.knn import KNNAccuracy, knn_predict
from mixbench.evaluate.linear import LinearProbe, linear_probe
from mixbench.evaluate.robustness import FGSM, Occlusion, fgsm_accuracy, occlusion_accuracy
from mixbench.evaluate.store import load_or_compute_features, load_or_run
from mixbench.evaluate.topk import TopKAccuracy, topk_accuracy

__all__ = ["EVALUATORS", "EvalContext", "Evaluator", "reported_classifier",
           "TopKAccuracy", "topk_accuracy", "EvalData", "eval_data",
           "extract_features", "KNNAccuracy", "knn_predict", "LinearProbe", "linear_probe", "load_or_run",
           "load_or_compute_features", "Calibration", "CalibrationStats", "calibration_counts",
           "reliability_diagram", "Occlusion", "FGSM", "occlusion_accuracy", "fgsm_accuracy", "CORRUPTIONS",
           "Corruptions", "corrupt"]
