"""Settings and fixtures for every test in the workspace: tests never download and never read a user's data
folder; ``user_error`` runs a console entry point that must refuse its arguments."""

from collections.abc import Callable, Sequence

import pytest


@pytest.fixture(autouse=True)
def _offline_data(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GENLAB_NO_DOWNLOAD", "1")
    monkeypatch.delenv("GENLAB_DATA", raising=False)


@pytest.fixture
def user_error(capsys: pytest.CaptureFixture) -> Callable[[Callable, Sequence[str]], str]:
    """``user_error(main, argv)``: run a console entry point that must refuse ``argv``, and return its error, which
    must be one line on stderr with exit status 2 and no traceback."""

    def refused(main: Callable, argv: Sequence[str]) -> str:
        with pytest.raises(SystemExit) as exit_info:
            main(list(argv))
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        return err

    return refused
