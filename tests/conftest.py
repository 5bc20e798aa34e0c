"""Fixtures shared by the tests that run the node as a process."""

from __future__ import annotations

from contextlib import ExitStack

import pytest

from nodeproc import NodeProcess


@pytest.fixture
def stack():
    """Peers (storescp, proxies, sinks) entered here are stopped at teardown, last first."""
    with ExitStack() as stack:
        yield stack


@pytest.fixture
def start_node(tmp_path):
    """``start_node(config, name)`` starts a NodeProcess; every one is stopped by PID at teardown."""
    started: list[NodeProcess] = []

    def start(config: dict, name: str = "node") -> NodeProcess:
        node = NodeProcess(tmp_path, config, name)
        started.append(node)
        return node.start()

    yield start
    for node in started:
        node.close()
