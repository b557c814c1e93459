"""genlab.core.bench: the core-vs-plain benchmark, through the VAE project's registered entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genlab.core.bench import main, registered_specs, run_benchmark
from genlab.core.errors import GenlabError


@pytest.mark.slow
def test_vae_benchmark_reports_both_throughputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`genlab-bench vae` on tiny synthetic data: positive throughputs for both loops, their ratio, a JSON copy."""
    monkeypatch.setenv("GENLAB_NO_DOWNLOAD", "1")
    output = tmp_path / "bench.json"
    # 4 timed + 2 warm-up steps per loop (the fewest that still time two logged segments of the core loop): the
    # point is that the whole path runs and reports sane numbers, not the numbers themselves.
    argv = ["vae", "--dataset", "synthetic", "--steps", "4", "--warmup", "2", "--repeats", "1", "--device", "cpu"]
    result = run_benchmark([*argv, "--output", str(output)])
    assert result["project"] == "vae" and result["dataset"] == "synthetic" and result["device"] == "cpu"
    assert result["steps"] == 4 and result["batch_size"] > 0
    assert result["core_images_per_second"] > 0 and result["plain_images_per_second"] > 0
    assert result["ratio"] == pytest.approx(result["core_images_per_second"] / result["plain_images_per_second"])
    assert json.loads(output.read_text()) == result


def test_vae_is_registered() -> None:
    """The VAE project registers its benchmark under the genlab.bench entry points."""
    assert "vae" in registered_specs()


def test_unknown_project_is_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown project is a GenlabError listing the registered ones; the console script exits 2 in one line."""
    with pytest.raises(GenlabError, match=r"no benchmark for project 'nope'; registered: .*vae"):
        run_benchmark(["nope", "--device", "cpu"])
    with pytest.raises(SystemExit) as info:
        main(["nope"])
    assert info.value.code == 2
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_non_positive_steps_are_refused() -> None:
    """--steps 0 fails validation before any timing starts."""
    with pytest.raises(GenlabError, match="must be positive"):
        run_benchmark(["vae", "--steps", "0"])
