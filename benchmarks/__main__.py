"""`python -m benchmarks WHAT`: run one bench, print its table, and rewrite its section of
BENCHMARKS.md (between its markers) unless `--no-write`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tokenfill import process
from tokenfill.paths import BENCHMARKS_MD, BUNDLED_MODEL


def runtime(args: argparse.Namespace) -> str:
    import tempfile

    from benchmarks.runtime import bench_runtime, preset_checkpoint

    dtypes = ("fp32", "bf16") if args.dtype == "auto" else (args.dtype,)
    if args.preset:
        with tempfile.TemporaryDirectory() as tmp:
            model = preset_checkpoint(args.preset, Path(tmp) / f"random-{args.preset}")
            return bench_runtime(model, dtypes=dtypes,
                                 command=f"python -m benchmarks runtime --preset {args.preset}")
    return bench_runtime(args.model, dtypes=dtypes)


def humaneval(args: argparse.Namespace) -> str:
    from benchmarks.humaneval import bench_humaneval

    return bench_humaneval(args.model, limit=args.limit, dtype=args.dtype)


def typing(args: argparse.Namespace) -> str:
    from benchmarks import typing_load

    return typing_load.run(args.model, files=args.files, chars=args.chars, cps=args.cps,
                           load_clients=args.load_clients, load_seconds=args.load_seconds)


def lsp(args: argparse.Namespace) -> str:
    from benchmarks import lsp

    return lsp.run(args.model)


def cursor(args: argparse.Namespace) -> str:
    from benchmarks import cursor

    return cursor.run(args.model, per_kind=args.per_kind, suffix_holes=2 * args.per_kind)


def speculative(args: argparse.Namespace) -> str:
    from benchmarks import speculative

    return speculative.run(args.model, per_kind=args.per_kind,
                           compare_transformers=not args.no_transformers)


def syntax(args: argparse.Namespace) -> str:
    from benchmarks import syntax

    return syntax.run(args.model, per_kind=args.per_kind)


def endings(args: argparse.Namespace) -> str:
    from benchmarks import endings

    return endings.run(args.model, per_kind=args.per_kind, humaneval=args.limit or 200)


def sizing(args: argparse.Namespace) -> str:
    from benchmarks import sizing

    return sizing.run(vocab=args.vocab)


def tokenizer(args: argparse.Namespace) -> str:
    from benchmarks import tokenizer

    if args.corpus is None:
        return "skipped: the tokenizer bench needs --corpus (a built corpus or its shards)"
    return tokenizer.run(args.corpus)


def context(args: argparse.Namespace) -> str:
    from benchmarks import context

    return context.run(args.model, per_kind=args.per_kind)


def gate(args: argparse.Namespace) -> str:
    from benchmarks import gate

    return gate.run(args.model, per_kind=args.per_kind, humaneval=args.limit or 300)


def engines(args: argparse.Namespace) -> str:
    from benchmarks import engines

    return engines.run(args.model, per_kind=args.per_kind)


def fuzz(args: argparse.Namespace) -> str:
    from benchmarks import fuzz

    return fuzz.run(args.model, bodies=args.bodies)


BENCHES = {"fuzz": fuzz, "runtime": runtime, "humaneval": humaneval, "typing": typing, "lsp": lsp,
           "cursor": cursor, "speculative": speculative, "syntax": syntax, "endings": endings,
           "sizing": sizing, "tokenizer": tokenizer, "context": context, "gate": gate,
           "engines": engines}


TITLES = {  # a section's heading, where BENCHMARKS.md has none for the bench yet
    "fuzz": "Fuzzing the HTTP routes and the language server",
    "runtime": "Runtime speed: tokenfill, `transformers` and llama-server on the same weights",
    "humaneval": "HumanEval single-line infilling through `tokenfill batch`",
    "typing": "Typing through the HTTP server: KV reuse on and off",
    "lsp": "Language server overhead",
    "cursor": "A cursor inside a token: `exact`, `heal` and `none`",
    "speculative": "Speculative decoding vs plain decoding",
    "syntax": "Syntax-aware completion vs raw decoding",
    "endings": "Where completions end, and the name after a dot: each rule off and on",
    "sizing": "Model size against the typing budget",
    "tokenizer": "Tokenizer vocabulary size",
    "context": "Repository context: with and without the workspace index",
    "gate": "The confidence gate: what is shown, and the compute it saves",
    "engines": "Other engines: tokenfill in-process, over vLLM, over llama-server",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks",
                                description="measure the runtime and the completions "
                                            "(BENCHMARKS.md)")
    p.add_argument("what", choices=list(BENCHES))
    p.add_argument("--model", type=Path, default=BUNDLED_MODEL)
    p.add_argument("--no-write", action="store_true",
                   help="print the table only; leave BENCHMARKS.md as it is")
    p.add_argument("--limit", type=int, default=0,
                   help="humaneval: at most this many tasks; endings: HumanEval rows of each set (200); "
                        "gate: HumanEval single-line rows (300)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                   help="runtime: the dtype to measure (auto: both); humaneval: as for complete")
    p.add_argument("--preset", choices=["mid", "base", "large"], default=None,
                   help="runtime: measure a training preset's shape with random weights (the "
                        "bundled tokenizer, a 2,048-token window) instead of --model")
    p.add_argument("--files", type=int, default=12, help="typing: held-out files to type in")
    p.add_argument("--chars", type=int, default=120, help="typing: characters typed per file")
    p.add_argument("--cps", type=float, default=15.0, help="typing: characters per second")
    p.add_argument("--load-clients", type=int, default=8, help="typing: concurrent typists")
    p.add_argument("--load-seconds", type=float, default=60.0, help="typing: load phase length")
    p.add_argument("--per-kind", type=int, default=50,
                   help="cursor: holes per token kind (identifier, number, operator, "
                        "indentation); speculative: holes per kind (block-body, multi-line, "
                        "humaneval-multi); syntax: holes per kind (whole-line, mid-line, "
                        "block-body, dot-identifier); endings, context, gate: the same kinds; "
                        "engines: whole-line and block-body holes")
    p.add_argument("--vocab", type=int, default=16384, help="sizing: the vocabulary size")
    p.add_argument("--corpus", type=Path, default=None,
                   help="tokenizer: a built corpus (file or folder of shards) to train on")
    p.add_argument("--bodies", type=int, default=5000, help="fuzz: request bodies to send")
    p.add_argument("--no-transformers", action="store_true",
                   help="speculative: skip the comparison with transformers generate")
    return p


def main(argv: list[str] | None = None) -> int:
    process.configure()  # before anything loads torch
    args = build_parser().parse_args(argv)
    from tokenfill.eval.report import update_section

    table = BENCHES[args.what](args)
    print(table)
    if not args.no_write and not table.startswith("skipped"):
        section, title = f"bench-{args.what}", TITLES[args.what]
        if args.what == "runtime" and args.preset:
            section += f"-{args.preset}"
            title += f", the {args.preset} preset's shape (random weights)"
        update_section(section, table, BENCHMARKS_MD, title=title)
        print(f"\n{BENCHMARKS_MD.name}: section {section} rewritten", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
