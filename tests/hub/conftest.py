"""Fixtures for the Hub tests: a local Hub-compatible server and tiny SAELens checkpoint folders.

``hub`` starts :class:`LocalHub` on 127.0.0.1 and points huggingface_hub at it (endpoint, a fresh
cache directory, online mode, a fake token) for one test, restoring everything afterwards.
"""

from __future__ import annotations

import huggingface_hub.constants as hf_constants
import pytest
from helpers import TOKEN
from local_hub import LocalHub


@pytest.fixture(scope="module")
def hub_server():
    server = LocalHub().start()
    yield server
    server.stop()


@pytest.fixture
def hub(hub_server, tmp_path, monkeypatch):
    """The local Hub, with huggingface_hub pointed at it and an empty cache under tmp_path."""
    hub_server.require_token = None
    hub_server.fail_commits = False
    url = hub_server.url
    monkeypatch.setattr(hf_constants, "ENDPOINT", url)
    monkeypatch.setattr(
        hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return hub_server


@pytest.fixture
def offline(monkeypatch):
    """Switch huggingface_hub to offline mode (as HF_HUB_OFFLINE=1 does) for the rest of a test."""

    def switch() -> None:
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)

    return switch
