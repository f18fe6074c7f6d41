"""Shared fixtures: every numerical test runs on cpu, and on cuda when present."""

from __future__ import annotations

import os

import pytest
import torch

REQUIRE_CUDA = os.environ.get("UNROLLSCI_REQUIRE_CUDA", "") not in ("", "0")

_DEVICES = ["cpu"]
if torch.cuda.is_available():
    _DEVICES.append("cuda")
elif REQUIRE_CUDA:
    raise RuntimeError(
        "UNROLLSCI_REQUIRE_CUDA is set but torch.cuda.is_available() is False: no GPU visible."
    )


@pytest.fixture(params=_DEVICES, ids=lambda d: f"device={d}")
def device(request) -> torch.device:
    """The device a numerical test runs on."""
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


def pytest_collection_modifyitems(config, items):
    # Default run excludes slow cases unless -m is given explicitly.
    if config.getoption("-m"):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def cli_status():
    """``unrollsci.cli.main(argv)``'s exit status, whether returned or raised by argparse."""
    from unrollsci import cli

    def run(argv):
        try:
            return cli.main(argv)
        except SystemExit as exc:
            return exc.code

    return run
