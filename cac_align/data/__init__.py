"""Datasets: the built-in synthetic anomaly world, and the tools that turn annotated videos into CaC training data
(``importer``/``skyra``: annotations -> manifest; ``vlm_client``/``cot_synthesis``: generate-verify CoT; ``sheets``:
expert sheets and anomaly rates; ``splits``: stage splits; ``commands``: ``cac-align data``)."""
