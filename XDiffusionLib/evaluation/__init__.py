"""Evaluation: the written leak-free protocol (``protocol``), the runner behind ``xdiffusion
evaluate`` (``runner``), its tables (``report``) and figures (``figures``)."""

from .runner import DEFAULT_KS, DEFAULT_METHODS, EvaluationResult, EvaluationSettings, evaluate, prepare, run

__all__ = ["DEFAULT_KS", "DEFAULT_METHODS", "EvaluationResult", "EvaluationSettings", "evaluate", "prepare", "run"]
