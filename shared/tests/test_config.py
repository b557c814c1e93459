"""genlab.core.config and genlab.core.errors: the CLI generated from a dataclass, presets, resume, one-line errors."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from genlab.core.config import CONFIG_FILE, build_parser, config_to_dict, load_saved_config, option, parse_config
from genlab.core.errors import GenlabError, exit_on_user_error

DATA = Path("data")


@dataclass
class ToyConfig:
    """A config with one field of every supported kind."""

    steps: int = option(10, "optimizer steps")
    lr: float = option(1e-3, "learning rate, decayed to 10% of itself")
    name: str = option("run", "run name")
    compile: bool = option(False, "compile the model")
    progress: bool = option(True, "show a progress bar")
    mode: Literal["fast", "slow"] = option("fast", "speed")
    dims: tuple[int, ...] = option((4, 8), "hidden sizes")
    size: int | None = option(None, "image size (None keeps it)")
    data_dir: Path = option(DATA, "data folder")  # noqa: RUF009 (option() is a field; a Path is immutable)
    preset: str = option("", "named preset")
    resume: str = option("", "run folder to resume")

    def validate(self) -> None:
        if self.steps <= 0:
            raise GenlabError(f"--steps must be positive, got {self.steps}")


PRESETS = {"paper": {"steps": 500, "lr": 0.01, "dims": (64, 64, 64)}}


def parse(*argv: str) -> ToyConfig:
    return parse_config(ToyConfig, list(argv), presets=PRESETS, prog="toy")


def test_defaults_come_from_the_dataclass() -> None:
    """No flags: exactly the dataclass defaults."""
    assert parse() == ToyConfig()


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [
        (["--steps", "42"], "steps", 42),
        (["--lr", "2.5e-4"], "lr", 2.5e-4),
        (["--name", "hello world"], "name", "hello world"),
        (["--mode", "slow"], "mode", "slow"),
        (["--dims", "1", "2", "3"], "dims", (1, 2, 3)),
        (["--dims"], "dims", ()),
        (["--size", "32"], "size", 32),
        (["--size", "none"], "size", None),
        (["--data-dir", "/tmp/x"], "data_dir", Path("/tmp/x")),
        (["--compile"], "compile", True),
        (["--compile", "true"], "compile", True),
        (["--compile", "false"], "compile", False),
        (["--progress", "false"], "progress", False),
        (["--no-progress"], "progress", False),
        (["--progress", "0"], "progress", False),
    ],
)
def test_each_field_type_parses(argv: list[str], field: str, value: object) -> None:
    """Every supported type parses to its declared Python type; bools accept --flag, --flag BOOL and --no-flag."""
    config = parse(*argv)
    assert getattr(config, field) == value
    assert type(getattr(config, field)) is type(value)
    others = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name != field}
    assert others == {k: v for k, v in dataclasses.asdict(ToyConfig()).items() if k != field}


def test_bare_bool_flag_before_another_flag() -> None:
    """`--compile --steps 3`: the bare bool takes no value from the next flag."""
    config = parse("--compile", "--steps", "3", "--no-progress")
    assert (config.compile, config.steps, config.progress) == (True, 3, False)


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--stpes", "3"], "unrecognized arguments"),
        (["--steps", "abc"], "invalid int value"),
        (["--lr", "fast"], "--lr"),
        (["--mode", "medium"], "invalid choice"),
        (["--compile", "maybe"], "--compile"),
        (["--dims", "1", "x"], "--dims"),
        (["--steps", "0"], "--steps must be positive"),  # validate() is called
        (["--preset", "huge"], "known presets: paper"),
    ],
)
def test_user_mistakes_are_one_line_errors(argv: list[str], fragment: str) -> None:
    """Unknown flags, ill-typed values, bad choices, failed validation, unknown presets: one-line GenlabError."""
    with pytest.raises(GenlabError) as info:
        parse(*argv)
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message


def test_presets_apply_and_flags_override_them() -> None:
    """A preset overrides the defaults; explicit flags override the preset, whatever their order."""
    config = parse("--preset", "paper")
    assert (config.steps, config.lr, config.dims, config.preset) == (500, 0.01, (64, 64, 64), "paper")
    assert config.name == "run"
    config = parse("--steps", "7", "--preset", "paper")
    assert (config.steps, config.lr) == (7, 0.01)


def write_run(folder: Path, config: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / CONFIG_FILE).write_text(json.dumps({"project": "toy", "config": config}))
    return folder


def test_resume_loads_saved_config_and_flags_override(tmp_path: Path) -> None:
    """--resume RUN takes the config saved there (JSON lists back to tuples); explicit flags still win."""
    saved = config_to_dict(ToyConfig(steps=99, lr=0.5, mode="slow", dims=(3, 5), size=16, compile=True))
    assert saved["dims"] == [3, 5] and saved["data_dir"] == "data"  # JSON-ready view
    run = write_run(tmp_path / "run", saved)
    assert load_saved_config(run)["steps"] == 99
    config = parse("--resume", str(run), "--lr", "0.25", "--no-compile")
    assert config == ToyConfig(
        steps=99, lr=0.25, mode="slow", dims=(3, 5), size=16, compile=False, data_dir=Path("data"), resume=str(run)
    )
    with pytest.raises(GenlabError, match="not a run folder"):
        parse("--resume", str(tmp_path / "nowhere"))
    bad = write_run(tmp_path / "bad", {"steps": 3, "colour": "red"})
    with pytest.raises(GenlabError, match="colour"):
        parse("--resume", str(bad))


@dataclass
class NoHelpConfig:
    steps: int = option(10, "")


@dataclass
class PlainFieldConfig:
    steps: int = dataclasses.field(default=10)


@pytest.mark.parametrize("cls", [NoHelpConfig, PlainFieldConfig])
def test_field_without_help_is_a_type_error(cls: type) -> None:
    """Every flag must be documented: a field without a help string is a programming error (TypeError)."""
    with pytest.raises(TypeError, match="help"):
        parse_config(cls, [])


def test_help_lists_every_field_with_its_help() -> None:
    """--help is generated from the dataclass: every flag with its help string and default."""
    text = build_parser(ToyConfig, prog="toy").format_help()
    for field in dataclasses.fields(ToyConfig):
        assert "--" + field.name.replace("_", "-") in text
        assert field.metadata["help"] in text
    assert "(default: 4 8)" in text


def test_exit_on_user_error_prints_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A wrapped script that raises GenlabError exits with status 2 and exactly one line on stderr."""

    @exit_on_user_error
    def main(argv: list[str]) -> ToyConfig:
        return parse(*argv)

    assert main(["--steps", "3"]).steps == 3  # the return value passes through
    with pytest.raises(SystemExit) as info:
        main(["--steps", "abc"])
    assert info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "invalid int value" in lines[0]
    assert captured.err.endswith("\n")


def test_exit_on_user_error_leaves_other_errors_alone() -> None:
    """Only user errors are turned into a message: a bug still raises with its traceback."""

    @exit_on_user_error
    def main() -> None:
        raise ValueError("a bug")

    with pytest.raises(ValueError, match="a bug"):
        main()
