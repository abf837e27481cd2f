"""Evaluation: the anomaly-judge benchmark (:mod:`cac_align.eval.bench`, :mod:`cac_align.eval.metrics`)."""
