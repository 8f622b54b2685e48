"""What the benches share."""

from __future__ import annotations

from benchmarks.common import header, model_option
from tokenfill.paths import BUNDLED_MODEL


def test_a_bench_names_its_model_as_it_must_be_given_again(tmp_path):
    assert model_option(BUNDLED_MODEL) == ""  # the default: nothing to give
    assert model_option(tmp_path / "other") == f" --model {tmp_path / 'other'}"


def test_the_header_names_the_command_and_the_machine():
    line = header("python -m benchmarks runtime")
    assert line.startswith("`python -m benchmarks runtime` on ") and "cores" in line
