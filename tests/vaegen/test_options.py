"""Options declared once: a config's `flag` fields become a command's options (vaegen.options,
vaegen.cliutil.flag_command), with their defaults, help, text codecs and checks."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import typer
from typer.testing import CliRunner

from vaegen.cliutil import flag_command, handle_errors, single_command_app
from vaegen.errors import VaegenError
from vaegen.options import INT_LIST, deal, flag, flag_names


@dataclass(frozen=True)
class Knobs:
    size: int = flag(3, "How many.")
    name: str | None = flag(None, "A name.")
    loud: bool = flag(False, "Shout.")
    dims: tuple[int, ...] = flag((8, 4), "Sizes.", codec=INT_LIST)
    hidden: int = flag(7, "A pipeline key and a keyword only.", cli=False)
    derived: int = 0  # not an option at all

    def __post_init__(self) -> None:
        if self.size < 1:
            raise VaegenError(f"--size must be >= 1; got {self.size}")


@dataclass(frozen=True)
class Other:
    rate: float = flag(0.5, "A rate.")


def _app(seen: list[Knobs]) -> typer.Typer:
    app = single_command_app("test")

    @app.command()
    @handle_errors
    @flag_command(Knobs)
    def run(knobs: Knobs, out: str = typer.Option(..., help="Where.")) -> None:
        seen.append(knobs)
        print(f"out={out}")

    return app


def test_flags_become_options_with_their_defaults_and_codecs() -> None:
    seen: list[Knobs] = []
    app = _app(seen)
    result = CliRunner().invoke(app, ["--out", "o", "--dims", "5,6,7", "--loud", "--name", "x"])
    assert result.exit_code == 0, result.output
    assert "out=o" in result.output
    assert seen == [Knobs(size=3, name="x", loud=True, dims=(5, 6, 7))]
    result = CliRunner().invoke(app, ["--out", "o"])
    assert result.exit_code == 0 and seen[-1] == Knobs()  # every default is the field's
    help_text = CliRunner().invoke(app, ["--help"], terminal_width=200).output
    assert "--size" in help_text and "How many." in help_text and "8,4" in help_text
    assert "--hidden" not in help_text and "--derived" not in help_text


@pytest.mark.parametrize("args", [["--size", "0"], ["--dims", "a,b"], ["--hidden", "1"]])
def test_a_refused_value_exits_2_with_one_line(args: list[str]) -> None:
    seen: list[Knobs] = []
    result = CliRunner().invoke(_app(seen), ["--out", "o", *args])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 or "No such option" in result.output
    assert not seen


def test_deal_sends_each_option_to_its_config_and_refuses_strangers() -> None:
    knobs, other = deal({"dims": [1, 2], "rate": 0.1, "hidden": 2}, Knobs, Other)
    assert knobs == {"dims": (1, 2), "hidden": 2} and other == {"rate": 0.1}
    with pytest.raises(VaegenError, match="derived"):
        deal({"derived": 1}, Knobs, Other)
    assert flag_names(Knobs, Other) == ["size", "name", "loud", "dims", "hidden", "rate"]


def test_a_name_declared_in_two_configs_is_refused() -> None:
    @dataclass(frozen=True)
    class Twin:
        rate: float = flag(0.1, "Another rate.")

    with pytest.raises(TypeError, match="repeat"):
        deal({"rate": 1.0}, Other, Twin)
