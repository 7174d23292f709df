"""`workbench bench WHAT` dispatches through one table with one calling convention (review 7,
finding 30): every name the CLI offers has an entry, and the arguments the table builds from
the parsed command line bind to the benchmark function's signature (nothing is run here)."""
from __future__ import annotations

import importlib
import inspect

import pytest

from workbench import bench
from workbench.__main__ import build_parser


def _choices() -> list[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    what = next(a for a in sub.choices["bench"]._actions if a.dest == "what")
    return list(what.choices)


@pytest.mark.parametrize("what", _choices())
def test_every_cli_benchmark_has_an_entry_whose_arguments_bind(what) -> None:
    args = build_parser().parse_args(["bench", what])
    module, name, kwargs = bench.BENCHES[what]
    fn = getattr(importlib.import_module(module), name)
    inspect.signature(fn).bind(**kwargs(args))


def test_published_latency_and_unknown_names() -> None:
    args = build_parser().parse_args(["bench", "latency", "--published"])
    module, name, kwargs = bench.BENCHES["latency --published"]
    assert (module, name) == ("workbench.latency.published", "bench_published")
    inspect.signature(getattr(importlib.import_module(module), name)).bind(**kwargs(args))
    with pytest.raises(ValueError, match="nope"):
        bench.run("nope", args)
