import os

import pytest
import torch
from hypothesis import settings

# Two cores: keep intra-op threads at 2 and make every test deterministic.
torch.set_num_threads(min(2, os.cpu_count() or 1))

# Property tests draw the same examples on every run (a CI result must not depend on luck);
# no example database, so a clean clone and a developer's checkout run identical cases.
# Explore new examples locally with HYPOTHESIS_PROFILE=explore.
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed_and_validation():
    import losslab

    torch.manual_seed(0)
    losslab.set_validation(True)
    yield
    losslab.set_validation(True)


# Shared test helpers (tests/_spawn.py) import as top-level modules, also in spawned workers.
import sys as _sys  # noqa: E402

_sys.path.insert(0, os.path.dirname(__file__))
