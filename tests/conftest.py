import os

import pytest
import torch

# Two cores: keep intra-op threads at 2 and make every test deterministic.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed_and_validation():
    import losslab

    torch.manual_seed(0)
    losslab.set_validation(True)
    yield
    losslab.set_validation(True)
