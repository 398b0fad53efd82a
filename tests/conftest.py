import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import pytest  # noqa: E402
import torch  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"

torch.set_num_threads(2)

# Backends the model contract runs on. A new backend adds its small random-init spec here.
CONTRACT_BACKENDS = ["janus-tiny", "showo-tiny"]


@pytest.fixture(scope="session", params=CONTRACT_BACKENDS)
def model(request):
    from unirl.models import load_model

    return load_model(request.param, device="cpu", dtype="float32", seed=0)


@pytest.fixture(scope="session")
def tiny_janus():
    from unirl.models import load_model

    return load_model("janus-tiny", device="cpu", dtype="float32", seed=0)
