"""Config fields that are also options: declared once, on the frozen config.

A stage's frozen config declares each user-facing field with `flag(default, help)`. From that one
declaration the stage's command gets its `--name` option (vaegen.cliutil.flag_command), the
pipeline gets the keys its TOML section may hold, and `deal` turns flat options (CLI values or a
TOML section) into each config's keyword arguments. Importing this module imports nothing heavy,
so the pipeline lists keys without torch.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from vaegen.errors import VaegenError

_KEY = "vaegen.flag"
T = TypeVar("T")


@dataclass(frozen=True)
class Codec:
    """For a field no command line parses (a tuple): how it is written as text and read back."""

    parse: Callable[[Any, str], Any]  # (text or TOML value, "--name") -> the field's value
    format: Callable[[Any], str]  # the field's default -> the text the CLI shows and parses


@dataclass(frozen=True)
class Flag:
    help: str
    codec: Codec | None = None
    cli: bool = True  # False: a pipeline key and a keyword argument, but no command-line option


@dataclass(frozen=True)
class FlagField:
    """One flag, as the CLI and the pipeline see it."""

    name: str
    config: type
    default: Any
    type: Any  # what the CLI parses
    flag: Flag

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def cli_default(self) -> Any:
        codec = self.flag.codec
        return codec.format(self.default) if codec and self.default is not None else self.default

    def parse(self, value: Any) -> Any:
        codec = self.flag.codec
        return codec.parse(value, self.option) if codec else value


def flag(default: Any, doc: str, *, codec: Codec | None = None, cli: bool = True) -> Any:
    """A frozen-config field that users set by name: `--name` on the CLI, `name` in TOML.

    `doc` is the option's help text; `codec` reads a tuple from text; `cli=False` leaves it off
    the command line (a pipeline key and keyword only).
    """
    return dataclasses.field(default=default, metadata={_KEY: Flag(doc, codec, cli)})


def flag_fields(*configs: type) -> list[FlagField]:
    """Every flag of `configs`, in declaration order."""
    found = []
    for config in configs:
        hints = typing.get_type_hints(config)
        for f in dataclasses.fields(config):
            meta = f.metadata.get(_KEY)
            if meta is not None:
                kind = str if meta.codec else hints[f.name]
                found.append(FlagField(f.name, config, f.default, kind, meta))
    names = [f.name for f in found]
    if len(set(names)) != len(names):  # one flat namespace: a name must say which config
        raise TypeError(f"flag names repeat across {[c.__name__ for c in configs]}: {names}")
    return found


def flag_names(*configs: type) -> list[str]:
    return [f.name for f in flag_fields(*configs)]


def deal(options: Mapping[str, Any], *configs: type) -> list[dict[str, Any]]:
    """Flat options -> one keyword dict per config, text parsed; an unknown name is refused."""
    fields = {f.name: f for f in flag_fields(*configs)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise VaegenError(f"unknown options {unknown}; known: {', '.join(sorted(fields))}")
    dealt: list[dict[str, Any]] = [{} for _ in configs]
    for name, value in options.items():
        f = fields[name]
        dealt[configs.index(f.config)][name] = f.parse(value)
    return dealt


def build(config: type[T], options: Mapping[str, Any]) -> T:
    """One config from its flat options."""
    [kwargs] = deal(options, config)
    return config(**kwargs)


def parse_ints(value: str | Sequence[int], option: str) -> tuple[int, ...]:
    """Text "512,256" or a TOML list [512, 256] -> (512, 256)."""
    try:
        items = value.split(",") if isinstance(value, str) else list(value)
        ints = tuple(int(v) for v in items if str(v).strip())
    except (ValueError, TypeError):
        raise VaegenError(f"{option} takes comma-separated integers, e.g. 512,256") from None
    if not ints:
        raise VaegenError(f"{option} needs at least one size")
    return ints


INT_LIST = Codec(parse=parse_ints, format=lambda value: ",".join(str(v) for v in value))
