"""One torch thread for the training tests: the spawned ranks run one thread each, and the
small models here train faster without threads competing for a shared machine's cores."""

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
