"""Lab tests run torch on one thread: on the shared 2-core machine, two busy OpenMP threads
competing with other jobs made a 3-second training take minutes."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
