"""Settings for every test in the workspace: tests never download and never read a user's data folder."""

import pytest


@pytest.fixture(autouse=True)
def _offline_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENLAB_NO_DOWNLOAD", "1")
    monkeypatch.delenv("GENLAB_DATA", raising=False)
