"""Evaluators: what a trained method (or a checkpoint that rebuilds one) is worth.

Every evaluator has one interface (:class:`Evaluator`): called with the method and the evaluation
data, it returns named metrics; its ``protocol`` says how they were produced. Top-1/top-5 accuracy
of the method's classifiers lives here; kNN, linear probing, transfer, calibration and robustness
register beside it.
"""

from mixbench.evaluate.base import EVALUATORS, EvalContext, Evaluator
from mixbench.evaluate.topk import TopKAccuracy, topk_accuracy

__all__ = ["EVALUATORS", "EvalContext", "Evaluator", "TopKAccuracy", "topk_accuracy"]
