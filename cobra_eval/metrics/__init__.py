"""COCO caption metrics (pycocoevalcap)."""

from cobra_eval.metrics.corpus import METRIC_GROUPS, CorpusScores, parse_metric_list, score_corpus

__all__ = ["METRIC_GROUPS", "CorpusScores", "parse_metric_list", "score_corpus"]
