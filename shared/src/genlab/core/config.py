"""A dataclass per script is the single source of defaults and help; the command line is generated from it.

    @dataclass
    class SampleConfig:
        run: str = option("", "run folder or checkpoint to sample from")
        count: int = option(64, "number of samples")

    config = parse_config(SampleConfig, argv)

Precedence, lowest to highest: the dataclass defaults, then a named preset (``--preset paper``) or, with
``--resume RUN``, the config saved in that run folder, then the flags given on the command line. Unknown or
ill-typed flags and values that fail the dataclass's ``validate()`` raise a one-line GenlabError.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from genlab.core.errors import GenlabError

T = TypeVar("T")

CONFIG_FILE = "config.json"


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with its help string, the one place a flag is documented."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:
        raise GenlabError(f"{self.prog}: {message} (see --help)")


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(members) == 1 and len(typing.get_args(annotation)) == 2:
            return members[0], True
    return annotation, False


def _scalar_parser(annotation: Any, name: str):
    if annotation is bool:
        return _parse_bool
    if annotation in (int, float, str):
        return annotation
    if annotation is Path:
        return Path
    raise TypeError(f"config field {name!r}: unsupported type {annotation!r}")


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _add_argument(parser: argparse.ArgumentParser, field: dataclasses.Field, annotation: Any) -> None:
    flag = "--" + field.name.replace("_", "-")
    help_text = field.metadata.get("help")
    if not help_text:
        raise TypeError(f"config field {field.name!r} has no help string: declare it with option()")
    base, optional = _unwrap_optional(annotation)
    kwargs: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS}
    default = field.default
    shown_default = default if not isinstance(default, tuple) else " ".join(map(str, default))
    # argparse %-formats help strings: a literal "10%" in a help text or a default must reach it as "10%%".
    kwargs["help"] = f"{help_text} (default: {shown_default})".replace("%", "%%")
    if base is bool:
        # `--flag`, `--flag true|false` and `--no-flag` all work (and `--flag none` where None is allowed).
        parse = _parse_bool if not optional else lambda text: None if text.lower() == "none" else _parse_bool(text)
        parser.add_argument(flag, nargs="?", const=True, type=parse, metavar="BOOL", **kwargs)
        parser.add_argument("--no-" + flag[2:], dest=field.name, action="store_false", help=argparse.SUPPRESS)
        return
    origin = typing.get_origin(base)
    if origin is Literal:
        choices = typing.get_args(base)
        element = type(choices[0])
        kwargs["type"] = element
        kwargs["choices"] = choices
        kwargs["metavar"] = "{" + ",".join(map(str, choices)) + "}"
    elif origin is tuple:
        element = typing.get_args(base)[0]
        kwargs["type"] = _scalar_parser(element, field.name)
        kwargs["nargs"] = "*"
        kwargs["metavar"] = element.__name__.upper()
    else:
        scalar = _scalar_parser(base, field.name)
        if optional:
            kwargs["type"] = lambda text, scalar=scalar: None if text.lower() == "none" else scalar(text)
        else:
            kwargs["type"] = scalar
        kwargs["metavar"] = base.__name__.upper()
    parser.add_argument(flag, **kwargs)


def _coerce(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """Turn JSON values (lists) back into the dataclass's declared types (tuples)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise GenlabError(f"unknown config keys {unknown} for {cls.__name__}")
    coerced = {}
    for name, value in values.items():
        base, _ = _unwrap_optional(hints[name])
        if typing.get_origin(base) is tuple and isinstance(value, list):
            value = tuple(value)
        elif base is Path and isinstance(value, str):
            value = Path(value)
        coerced[name] = value
    return coerced


def build_parser(cls: type, prog: str | None = None, description: str | None = None) -> argparse.ArgumentParser:
    """The argparse parser generated from a config dataclass (every field a flag, every flag with help)."""
    parser = _OneLineParser(
        prog=prog,
        description=description or (cls.__doc__ or "").strip().split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        _add_argument(parser, field, hints[field.name])
    return parser


def parse_config(
    cls: type[T],
    argv: Sequence[str] | None = None,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
    prog: str | None = None,
) -> T:
    """Parse ``argv`` into an instance of the dataclass ``cls`` (see the module docstring for precedence)."""
    parser = build_parser(cls, prog=prog)
    explicit = vars(parser.parse_args(argv))
    values: dict[str, Any] = {}
    presets = presets or {}
    preset = explicit.get("preset")
    if preset:
        if preset not in presets:
            known = ", ".join(sorted(presets)) or "none"
            raise GenlabError(f"unknown preset {preset!r}; known presets: {known}")
        values.update(presets[preset])
    resume = explicit.get("resume")
    if resume:
        values = load_saved_config(resume)
    values.update(explicit)
    config = cls(**_coerce(cls, values))
    validate = getattr(config, "validate", None)
    if validate is not None:
        validate()
    return config


def load_saved_config(run_dir: str | Path) -> dict[str, Any]:
    """The resolved config that a script saved in its run folder."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise GenlabError(f"{run_dir} is not a run folder: it has no {CONFIG_FILE}")
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise GenlabError(f"{path} is damaged ({type(error).__name__}: {error})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise GenlabError(f"{path} is damaged: it holds no config")
    return dict(saved["config"])


def config_to_dict(config: Any) -> dict[str, Any]:
    """JSON-ready view of a config dataclass (paths as strings, tuples as lists)."""
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))
