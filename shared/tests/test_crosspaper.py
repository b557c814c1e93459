"""genlab-table: rows collected from runs, the table rendered from rows, and the root README kept in step."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from genlab.core.crosspaper import END, START, collect_row, main, read_rows, render_table, with_table
from genlab.core.errors import GenlabError

REPO = Path(__file__).resolve().parents[2]


def report(fid: float, count: int, floor_fid: float, sha256: str = "ab" * 32) -> dict[str, Any]:
    """A genlab-eval report of the shape evaluate() writes."""
    scores = {"fid": fid, "kid": fid / 1000, "kid_std": 0.0, "precision": 0.5, "recall": 0.25}
    floor = {"fid": floor_fid, "kid": 0.0001, "kid_std": 0.0, "precision": 0.75, "recall": 0.75}
    return {
        "num_samples": count,
        "reference": {"dataset": "fashion_mnist", "split": "train", "count": count, "size": 28},
        "feature_network": {"name": "net", "sha256": sha256},
        "scores": scores,
        "floor": {"split": "test", "count": count, "scores": floor},
    }


def make_run(
    root: Path, name: str, fid: float, bits: float | None, classifier: str = "ab" * 32, floor_fid: float = 2.0
) -> Path:
    run = root / name
    (run / "samples").mkdir(parents=True)
    (run / "checkpoints" / "step_00000777").mkdir(parents=True)
    config = {"project": "demo", "config": {"dataset": "fashion_mnist", "time_limit": 20.0}}
    (run / "config.json").write_text(json.dumps(config))
    if bits is not None:
        (run / "results.json").write_text(json.dumps({"step": 777, "bits_per_dim": bits}))
    made = {"parameters": 12345, "function_evaluations_per_sample": 784, "seconds_per_sample": 0.0125, "device": "cpu"}
    (run / "samples" / "samples.json").write_text(json.dumps(made))
    (run / "samples" / "eval-classifier-train-10000.json").write_text(
        json.dumps(report(fid, 10_000, floor_fid, classifier))
    )
    (run / "samples" / "eval-inception-train-2000.json").write_text(json.dumps(report(10 * fid, 2000, 20.0)))
    return run


def test_a_row_holds_what_the_run_measured(tmp_path: Path) -> None:
    row = collect_row(make_run(tmp_path, "a", 40.0, 3.25), "Model A", "row.sh a", "a 2-core CPU")
    assert row["steps"] == 777 and row["budget_minutes"] == 20.0 and row["bits_per_dim"] == 3.25
    assert row["parameters"] == 12345 and row["function_evaluations_per_sample"] == 784
    assert row["classifier"]["fid"] == 40.0 and row["inception"]["fid"] == 400.0
    assert row["classifier"]["floor"]["fid"] == 2.0 and row["classifier"]["num_samples"] == 10_000
    # a second stage's run knows only its own time limit: the row can carry both stages' minutes
    two_stage = collect_row(tmp_path / "a", "A + prior", "row.sh a", "cpu", budget_minutes=37.0)
    assert two_stage["budget_minutes"] == 37.0


def test_the_table_puts_the_floor_first_then_the_best_model(tmp_path: Path) -> None:
    rows = [
        collect_row(make_run(tmp_path, "worse", 90.0, None), "Worse", "row.sh worse", "cpu"),
        collect_row(make_run(tmp_path, "better", 30.0, 3.5), "Better", "row.sh better", "cpu"),
    ]
    lines = render_table(rows).splitlines()
    assert lines[2].startswith("| data floor") and "| 2.00 |" in lines[2] and "| 20.00 |" in lines[2]
    assert lines[3].startswith("| Better |") and "| 30.00 |" in lines[3] and "| 3.500 |" in lines[3]
    assert lines[4].startswith("| Worse |") and "| 12.50 |" in lines[4]  # ms per sample
    assert "- Better: `row.sh better`" in lines


def test_classifier_scores_are_ranked_only_among_rows_of_one_classifier(tmp_path: Path) -> None:
    """Another machine's classifier gives other features: its rows go under their own floor, never between rows
    scored by the first classifier, however their FIDs compare."""
    other = "cd" * 32
    rows = [
        collect_row(make_run(tmp_path, "a", 30.0, None), "A", "a", "cpu"),
        collect_row(make_run(tmp_path, "b", 90.0, None), "B", "b", "cpu"),
        collect_row(make_run(tmp_path, "c", 60.0, None, other, floor_fid=5.0), "C", "c", "another cpu"),
    ]
    names = [line.split(" | ")[0].removeprefix("| ") for line in render_table(rows).splitlines()[2:6]]
    assert names == ["data floor (train vs test images), classifier abababab", "A", "B",
                     "data floor (train vs test images), classifier cdcdcdcd"]  # fmt: skip
    assert "| 5.00 |" in render_table(rows).splitlines()[5] and render_table(rows).splitlines()[6].startswith("| C |")


def test_a_row_without_the_protocols_reports_is_refused(tmp_path: Path) -> None:
    run = make_run(tmp_path, "a", 40.0, None)
    (run / "samples" / "eval-inception-train-2000.json").unlink()
    with pytest.raises(GenlabError, match="genlab-eval --features inception --num-samples 2000"):
        collect_row(run, "A", "cmd", "cpu")


def test_add_then_render_rewrites_only_between_the_markers(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{START}\nold table\n{END}\nafter\n")
    rows = tmp_path / "rows"
    main(["--add", str(make_run(tmp_path, "a", 40.0, None)), "--name", "Model A", "--command", "c", "--machine", "m",
          "--rows", str(rows)])  # fmt: skip
    assert [row["name"] for row in read_rows(rows)] == ["Model A"]
    with pytest.raises(SystemExit):
        main(["--readme", str(readme), "--rows", str(rows), "--check"])
    main(["--readme", str(readme), "--rows", str(rows)])
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n") and text.endswith(f"{END}\nafter\n") and "old table" not in text
    assert "| Model A |" in text
    main(["--readme", str(readme), "--rows", str(rows), "--check"])


def test_a_readme_without_markers_is_refused() -> None:
    with pytest.raises(GenlabError, match="markers"):
        with_table("no table here", "| t |")


def test_the_root_readme_table_is_what_the_committed_rows_give(monkeypatch: pytest.MonkeyPatch) -> None:
    """The committed README and results/crosspaper/ agree: a row added without `genlab-table` fails here."""
    monkeypatch.chdir(REPO)
    main(["--check"])
