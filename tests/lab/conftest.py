"""Lab tests run torch and BLAS on one thread: on the shared 2-core machine, two busy OpenMP
threads competing with other jobs made a 3-second training take minutes."""

import pytest
import torch
from threadpoolctl import threadpool_limits


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    torch.set_num_threads(previous)
