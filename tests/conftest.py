"""Shared test setup: gpu tests skip without CUDA; torch runs on one thread.

The models in tests are tiny: one thread is as fast as two for them and does not fight other processes (the
2-process gloo tests, the loopback servers) for the 2 CI cores."""

import pytest
import torch

torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
