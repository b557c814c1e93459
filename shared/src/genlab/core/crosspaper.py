"""``genlab-table``: every paper family scored by one protocol, in one table, generated from committed rows.

    genlab-table --add runs/gans/fashion-dcgan --name DCGAN --machine "..." --command "results/crosspaper/row.sh ..."
    genlab-table                             # rewrites the table between the markers in the root README.md
    genlab-table --check                     # exit 2 if the README's table is not what the rows give

A row is a small JSON file under ``results/crosspaper/<dataset>/`` collected from one run folder: its config
(project, training budget), results.json (bits/dim, where the model has a likelihood), samples/samples.json
(parameters, network evaluations and wall time per sample) and the two ``genlab-eval`` reports beside the
samples (genlab's classifier features on 10k samples, TF-Inception on 2k). The table's first row is the data
floor: the same metrics between two sets of real images of the same sizes, what a perfect model would get.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genlab.core.checkpoint import read_json, read_run_info, write_text_atomic
from genlab.core.config import option, parse_config
from genlab.core.errors import GenlabError, exit_on_user_error

ROWS = Path("results") / "crosspaper"
START, END = "<!-- crosspaper:start -->", "<!-- crosspaper:end -->"
# The protocol every row follows; a report scored any other way is refused when the row is collected.
PROTOCOL = {"classifier": 10_000, "inception": 2_000}


@dataclass
class TableConfig:
    """Collect a cross-paper row from a run, or render the table into the README."""

    add: str = option("", "collect a row from this run folder (its samples/ holds samples.json and both reports)")
    name: str = option("", "with --add: the model's name in the table")
    command: str = option("", "with --add: the command that produced the run, its samples and its scores")
    machine: str = option("", "with --add: the hardware it ran on, in words")
    budget_minutes: float = option(
        0.0,
        "with --add: the training minutes in all (default: the run's --time-limit), "
        "e.g. both stages of a two-stage model",
    )
    rows: str = option(str(ROWS), "folder of the committed rows")
    readme: str = option("README.md", "the README whose table (between the markers) is rewritten")
    check: bool = option(False, "only check that the README's table is up to date (exit 2 if not)")

    def validate(self) -> None:
        if self.add and not (self.name and self.command and self.machine):
            raise GenlabError("genlab-table --add needs --name, --command and --machine")


def _report(samples: Path, features: str) -> dict[str, Any]:
    count = PROTOCOL[features]
    path = samples / f"eval-{features}-train-{count}.json"
    if not path.is_file():
        raise GenlabError(f"{path} is missing: run genlab-eval --features {features} --num-samples {count} first")
    return read_json(path, f"the {features} report")


def collect_row(run: Path, name: str, command: str, machine: str, budget_minutes: float = 0.0) -> dict[str, Any]:
    """One row of the table from a finished run folder and its scored samples; ``budget_minutes`` replaces the
    run's own time limit (a second stage's run knows only its own)."""
    info = read_run_info(run)
    config, samples = info["config"], run / "samples"
    made = read_json(samples / "samples.json", "write it with the project's sample script --npz")
    classifier, inception = _report(samples, "classifier"), _report(samples, "inception")
    has_results = (run / "results.json").is_file()
    results = read_json(run / "results.json", "the run's final measurements") if has_results else {}
    checkpoints = sorted((run / "checkpoints").glob("step_*"))
    steps = results.get("step") or (int(checkpoints[-1].name.removeprefix("step_")) if checkpoints else None)

    def scores(report: dict[str, Any]) -> dict[str, Any]:
        return {
            "num_samples": report["num_samples"],
            "reference": report["reference"],
            "feature_network": report["feature_network"],
            **{k: report["scores"][k] for k in ("fid", "kid", "precision", "recall")},
            "floor": {"count": report["floor"]["count"], **report["floor"]["scores"]} if "floor" in report else None,
        }

    return {
        "name": name,
        "project": info["project"],
        "dataset": config["dataset"],
        "budget_minutes": budget_minutes or config.get("time_limit") or None,
        "steps": steps,
        "parameters": made["parameters"],
        "bits_per_dim": results.get("bits_per_dim"),
        "function_evaluations_per_sample": made["function_evaluations_per_sample"],
        "seconds_per_sample": made["seconds_per_sample"],
        "sampling_device": made["device"],
        "classifier": scores(classifier),
        "inception": scores(inception),
        "machine": machine,
        "command": command,
    }


def _number(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _floor_line(rows: Sequence[dict[str, Any]], label: str) -> str:
    floor_c, floor_i = rows[0]["classifier"]["floor"] or {}, rows[0]["inception"]["floor"] or {}
    return (
        f"| {label} | | | | | {_number(floor_c.get('fid'))} | {_number(floor_c.get('kid'), 4)} "
        f"| {_number(floor_c.get('precision'))} | {_number(floor_c.get('recall'))} | {_number(floor_i.get('fid'))} "
        "| | | | |"
    )


def classifier_hash(row: dict[str, Any]) -> str:
    return row["classifier"]["feature_network"]["sha256"]


def render_table(rows: Sequence[dict[str, Any]]) -> str:
    """The markdown table: the data floor first, then one row per model, best classifier FID first.

    genlab's classifier is retrained on each machine and its weights differ between CPU types, so classifier
    scores compare only among rows scored by one classifier. Rows are grouped by its sha256, each group under its
    own data floor, the largest group first; the TF-Inception columns compare across all groups."""
    if not rows:
        return "No rows measured yet: see results/crosspaper/README.md for the protocol and the commands."
    lines = [
        "| model | project | budget (min) | steps | parameters | classifier FID (10k) | classifier KID | "
        "precision | recall | Inception FID (2k) | bits/dim | NFE / sample | ms / sample | machine |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(classifier_hash(row), []).append(row)
    for sha256, group in sorted(groups.items(), key=lambda item: (-len(item[1]), item[0])):
        label = "data floor (train vs test images)"
        if len(groups) > 1:
            label += f", classifier {sha256[:8]}"
        lines.append(_floor_line(group, label))
        for row in sorted(group, key=lambda r: r["classifier"]["fid"]):
            c, i = row["classifier"], row["inception"]
            lines.append(
                f"| {row['name']} | {row['project']} | {_number(row['budget_minutes'], 0)} | {row['steps']} "
                f"| {row['parameters']:,} | {_number(c['fid'])} | {_number(c['kid'], 4)} | {_number(c['precision'])} "
                f"| {_number(c['recall'])} | {_number(i['fid'])} | {_number(row['bits_per_dim'], 3)} "
                f"| {row['function_evaluations_per_sample']:,} | {_number(1000 * row['seconds_per_sample'], 2)} "
                f"| {row['machine']} |"
            )
    lines.append("")
    lines.append("Commands, one per row:")
    lines.extend(f"- {row['name']}: `{row['command']}`" for row in sorted(rows, key=lambda r: r["name"]))
    return "\n".join(lines)


def read_rows(folder: Path, dataset: str = "fashion_mnist") -> list[dict[str, Any]]:
    return [read_json(path, "a cross-paper row") for path in sorted((Path(folder) / dataset).glob("*.json"))]


def with_table(readme: str, table: str) -> str:
    """The README text with everything between the markers replaced by ``table``."""
    if START not in readme or END not in readme:
        raise GenlabError(f"the README has no {START} ... {END} markers to put the table between")
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main_table(config: TableConfig) -> None:
    if config.add:
        row = collect_row(Path(config.add), config.name, config.command, config.machine, config.budget_minutes)
        path = Path(config.rows) / row["dataset"] / f"{config.name.lower().replace(' ', '-')}.json"
        others = {classifier_hash(other) for other in read_rows(Path(config.rows), row["dataset"])}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(row, indent=1) + "\n")
        print(f"row: {path}")
        if others and classifier_hash(row) not in others:
            print(
                f"note: classifier {classifier_hash(row)[:8]} scored no other row: its classifier columns start "
                "a group of their own under their own floor (the Inception columns compare with every row)"
            )
        return
    readme = Path(config.readme)
    text = readme.read_text()
    updated = with_table(text, render_table(read_rows(Path(config.rows))))
    if config.check:
        if updated != text:
            raise GenlabError(f"{readme}'s cross-paper table is not what {config.rows} gives: run genlab-table render")
        print(f"{readme}'s cross-paper table is up to date")
        return
    write_text_atomic(readme, updated)
    print(f"table written into {readme}")


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    main_table(parse_config(TableConfig, argv, prog="genlab-table"))
