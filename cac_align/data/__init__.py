"""Datasets: the built-in synthetic anomaly world and (later) annotation import and CoT synthesis."""
