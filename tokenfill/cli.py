"""The `tokenfill` command: complete, batch, serve, lsp, train, eval, corpus, gate, ngrams, export."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from tokenfill import process
from tokenfill.paths import BUNDLED_MODEL, DEMO_FILE, shared_data


class UsageError(Exception):
    """Bad input from the command line: printed as `tokenfill: error: ...`, exit status 2."""


def add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=BUNDLED_MODEL,
                   help="checkpoint directory in Hugging Face layout, or a .gguf file (default: the "
                        "bundled model)")
    p.add_argument("--max-tokens", type=int, default=64, help="most tokens to generate (default 64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default) decodes greedily")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"],
                   help="weights' dtype; auto: whichever decodes faster here (fp32 where the "
                        "CPU has no fast bf16; a one-time trial where it has)")
    add_engine_option(p)
    add_cursor_option(p)
    add_speculative_option(p)
    add_syntax_option(p)
    add_confidence_option(p, "; given, completions are gated as automatic ones are, else "
                             "every one is shown with its score")


def add_confidence_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--min-confidence", type=float, default=None, metavar="SCORE",
                   help="show a completion only at this confidence score (0 to 1) or more; 0 "
                        "shows all; default: the threshold of the model's gate" + what)


def add_syntax_option(p: argparse.ArgumentParser, what: str = "") -> None:
    p.add_argument("--no-syntax", dest="syntax", action="store_false",
                   help=f"decode raw{what}: no reading of the code around the cursor to decide "
                        "whether to complete, one line or a block, and where to stop")


def add_speculative_option(p: argparse.ArgumentParser, what: str = "") -> None:
    p.add_argument("--no-speculative", dest="speculative", action="store_false",
                   help=f"decode token by token{what}, without verifying drafts (same output, "
                        "slower)")


def add_engine_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--engine", action="append", default=[], metavar="URL",
                   help="a running vLLM or llama.cpp server (llama-server) that serves the model: "
                        "it runs the model, tokenfill does the rest, with --model's tokenizer "
                        "and FIM template; repeat for replicas (README: Running the model on "
                        "other engines)")


def add_cursor_option(p: argparse.ArgumentParser, what: str = "") -> None:
    from tokenfill.completion.cursor_modes import CURSOR_MODES

    p.add_argument("--cursor-mode", default="exact", choices=list(CURSOR_MODES),
                   help=f"a cursor inside a token{what}: exact (default) conditions on the exact "
                        "bytes before it, heal is token healing, none encodes the prefix as is")


def add_context_options(p: argparse.ArgumentParser, default_help: str) -> None:
    p.add_argument("--workspace", type=Path, default=None,
                   help=f"the folder whose other files are retrieved into the prompt ({default_help})")
    p.add_argument("--no-context", action="store_true",
                   help="complete from the file alone: no workspace context")
    p.add_argument("--context-tokens", type=int, default=None,
                   help="prompt tokens the workspace context may take (default: a quarter of "
                        "the model's window)")


def complete_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path)
    p.add_argument("--line", type=int, required=True, help="1-based line of the cursor")
    p.add_argument("--column", type=int, required=True,
                   help="1-based column of the cursor, in characters (1: before the first)")
    add_model_options(p)
    add_context_options(p, "default: the file's repository, the nearest folder above it with "
                           ".git")


def batch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", type=Path, help="JSON lines with id, prefix, suffix (and path, the "
                                            "file's path in the workspace)")
    p.add_argument("-o", "--output", type=Path, required=True)
    add_model_options(p)
    add_context_options(p, "default: none")


def serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=BUNDLED_MODEL,
                   help="checkpoint directory in Hugging Face layout, or a .gguf file (default: "
                        "the bundled model)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a name clients reach the server by, besides the address bound and "
                        "localhost (requests naming another host get 421); repeat for several")
    p.add_argument("--header-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="a connection must send a request's headers within this time once it "
                        "opens or starts one (default 10)")
    p.add_argument("--body-timeout", type=float, default=30.0, metavar="SECONDS",
                   help="a request body that stops arriving this long gets 408 (default 30)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web origin (https://example.com) whose pages may call the API from a "
                        "browser; none by default; repeat for several")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every request but /health")
    p.add_argument("--slots", type=int, default=4,
                   help="KV cache slots kept for reuse (default 4); with --engine, the requests "
                        "sent to each engine at once")
    p.add_argument("--no-cache-reuse", action="store_true",
                   help="recompute every prompt from scratch (for comparison)")
    p.add_argument("--max-body-bytes", type=int, default=2 * 2**20,
                   help="larger request bodies get 413 (default 2 MiB)")
    p.add_argument("--max-tokens", type=int, default=64,
                   help="tokens to generate when a request does not say (default 64)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    add_engine_option(p)
    add_cursor_option(p, " (for requests without a cursor_mode field)")
    add_speculative_option(p, " (for requests without a speculative field)")
    add_syntax_option(p, " (for requests without a syntax field)")
    add_confidence_option(p, " (for requests without a min_confidence field; a request the "
                             "client marks invoked is never held back)")
    add_context_options(p, "default: none")


def lsp_arguments(p: argparse.ArgumentParser) -> None:
    add_engine_option(p)


def demo_arguments(p: argparse.ArgumentParser) -> None:
    add_model_options(p)


def train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", type=Path, default=Path("runs/small"),
                   help="working directory: corpus, tokenizer, resumable state (default runs/small)")
    p.add_argument("--out", type=Path, default=None,
                   help="where to export the checkpoint and model card (e.g. models/tokenfill-small)")
    p.add_argument("--preset", default="small",
                   help="model size: small, mid, base, large, tiny (BENCHMARKS.md: sizing)")
    p.add_argument("--corpus", type=Path, action="append", default=[],
                   help="a built corpus: a file from `tokenfill corpus` or a folder of its shards "
                        "(repeat for several; default: RUN/corpus.jsonl, built on first use)")
    p.add_argument("--environment", action="store_true",
                   help="also train on the packages installed here that the manifest does not "
                        "list (read into RUN/environment.jsonl on first use)")
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="a tokenizer.json to use (default: RUN/tokenizer.json, trained on first use)")
    p.add_argument("--init", type=Path, default=None,
                   help="start from this exported checkpoint's weights (and heads)")
    p.add_argument("--heads", type=int, default=0,
                   help="multi-token prediction heads to train beside the model (0: none)")
    p.add_argument("--decay-fraction", type=float, default=0.2,
                   help="the share of the run over which the learning rate decays")
    p.add_argument("--shard-mib", type=float, default=16,
                   help="exported weights go in files of at most this many MiB")
    p.add_argument("--repo-rate", type=float, default=0.3,
                   help="the share of fill-in-the-middle samples given context from other files "
                        "of their package, as the workspace retriever gives it (default 0.3)")
    add_corpus_sources(p)
    p.add_argument("--no-ngrams", action="store_true",
                   help="export without the corpus drafter's table (build it later: tokenfill ngrams)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="time budget; the schedule anneals to finish within it (0: none)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=768)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100, help="warm-up steps")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--workers", type=int, default=0,
                   help="processes that build training batches (0: the training process)")
    p.add_argument("--compile", action="store_true", help="torch.compile the network (GPU)")
    p.add_argument("--no-resume", action="store_true", help="start over even if a state exists")
    p.add_argument("--no-progress", action="store_true")


def eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", help="humaneval-single, humaneval-multi, humaneval-span-light, "
                                "realcode, tokens, latency, or all (the default suite, written "
                                "to BENCHMARKS.md)")
    p.add_argument("--model", type=Path, default=BUNDLED_MODEL)
    p.add_argument("--limit", type=int, default=0,
                   help="at most this many rows (holes per kind, files, cursors per kind)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    add_cursor_option(p)


def add_corpus_sources(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache", type=Path, default=None,
                   help="where downloaded wheels are kept (default ~/.cache/tokenfill/corpus): "
                        "offline, the held-out packages' wheels must be there")
    p.add_argument("--benchmark-data", type=Path, default=None,
                   help="the benchmark data the corpus is checked against (default: shared/data "
                        "beside the checkout)")


def corpus_arguments(p: argparse.ArgumentParser) -> None:
    add_corpus_sources(p)
    p.add_argument("--out", type=Path, default=Path("runs/corpus.jsonl"))
    p.add_argument("--environment", action="store_true",
                   help="also read the packages installed in this interpreter that the manifest "
                        "does not list (each is named with its version in the index)")
    p.add_argument("--shards", type=Path, default=None,
                   help="also split the corpus into xz-compressed shards in this folder")
    p.add_argument("--shard-mib", type=int, default=16, help="about this many MiB a shard")
    p.add_argument("--workers", type=int, default=2, help="processes that filter the files")


def ngrams_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("corpus", type=Path, help="code to count: a corpus from `tokenfill corpus` or "
                   "`tokenfill train` (JSON lines, .gz or .xz too; its training split), or a "
                   "directory (every .py file under it)")
    p.add_argument("--model", type=Path, default=BUNDLED_MODEL,
                   help="checkpoint directory: its tokenizer, and where the table is kept "
                        "(default: the bundled model)")
    p.add_argument("--min-count", type=int, default=3,
                   help="keep a context seen at least this often (default 3)")
    p.add_argument("--min-share", type=float, default=0.4,
                   help="keep a context whose top next token has at least this share (default 0.4)")
    p.add_argument("--predict", type=int, default=2_000_000, metavar="TOKENS",
                   help="the model also reads about this many tokens of the code and what it "
                        "predicts next is counted too, so the table drafts what the model writes "
                        "(default 2,000,000: about 5 minutes on two CPU cores; 0: off)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tokenfill", description="Code completion at the cursor "
                                     "from a local language model.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (help_text, arguments, _) in COMMANDS.items():
        arguments(sub.add_parser(name, help=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    process.configure()  # before anything loads torch
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command][2](args)
    except UsageError as e:
        print(f"tokenfill: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        from tokenfill.runtime.remote import EngineError

        if not isinstance(e, EngineError):
            raise
        print(f"tokenfill: error: {e}", file=sys.stderr)
        return 1


def load_engine(args: argparse.Namespace):
    from tokenfill.completion.engine import Engine
    from tokenfill.completion.fim import FimUnsupportedError
    from tokenfill.runtime.checkpoint import CheckpointError

    try:
        return Engine.open(args.model, args.dtype, tuple(getattr(args, "engine", ())))
    except (CheckpointError, FimUnsupportedError, FileNotFoundError, ValueError) as e:
        raise UsageError(f"cannot load model {args.model}: {e}") from e


def request_of(args: argparse.Namespace, prefix: str, suffix: str, **more):
    """The completion request at one cursor, with the command line's options."""
    from tokenfill.completion.request import CompletionRequest, RequestError
    from tokenfill.runtime.generate import Sampling

    if args.max_tokens < 1:
        raise UsageError("--max-tokens must be at least 1")
    if args.min_confidence is not None:  # gated as an editor's automatic request is
        more = {**more, "invoked": False, "min_confidence": args.min_confidence}
    try:
        return CompletionRequest(
            prefix=prefix, suffix=suffix, max_tokens=args.max_tokens,
            sampling=Sampling(temperature=args.temperature, top_p=args.top_p, seed=args.seed),
            cursor_mode=args.cursor_mode, speculative=args.speculative, syntax=args.syntax,
            **more)
    except (RequestError, ValueError) as e:
        raise UsageError(str(e)) from e


def cursor_offset(text: str, line: int, column: int, name: str = "the file") -> int:
    """Character offset of a 1-based (line, column) cursor; column counts characters."""
    lines = text.split("\n")
    if not 1 <= line <= len(lines):
        raise UsageError(f"line {line} is outside {name}, which has {len(lines)} lines")
    width = len(lines[line - 1].removesuffix("\r"))
    if not 1 <= column <= width + 1:
        raise UsageError(f"column {column} is outside line {line} of {name}, which has {width} "
                         f"characters (columns 1 to {width + 1})")
    return sum(len(x) + 1 for x in lines[:line - 1]) + column - 1


def read_source(path: Path) -> str:
    try:
        with open(path, encoding="utf-8", newline="") as f:
            return f.read()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{path} is a directory, not a file") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def repository_of(path: Path) -> Path | None:
    """The nearest folder at or above `path`'s folder that holds `.git`."""
    for folder in [path.resolve().parent, *path.resolve().parents]:
        if (folder / ".git").exists():
            return folder
    return None


def open_workspace(args: argparse.Namespace, root: Path | None, engine):
    """The workspace at `root` (None: no context), indexed now with a progress bar: a command
    completes once, so it waits for the index that a server would build in the background."""
    from tqdm import tqdm

    from tokenfill.context.index import WorkspaceError
    from tokenfill.context.workspace import Workspaces

    if root is None or args.no_context:
        return None
    budget = engine.context // 4 if args.context_tokens is None else args.context_tokens
    if budget < 0:
        raise UsageError("--context-tokens must be 0 or more")
    spaces = Workspaces(budget=budget, count_tokens=lambda text: len(engine.tokenizer.encode(text)))
    try:
        ws = spaces.add(root)
    except WorkspaceError as e:
        raise UsageError(str(e)) from None
    with tqdm(desc=f"indexing {root}", unit="file", leave=False) as bar:
        while not ws.wait(0.1):
            bar.total, bar.n = ws.progress[1] or None, ws.progress[0]
            bar.refresh()
    stats = ws.stats
    if stats is None:
        print(f"workspace {root}: indexing failed (see above); completing without its context",
              file=sys.stderr)
        spaces.close()
        return None
    print(f"workspace {root}: {ws.index.file_count()} files, {stats.chunks} chunks "
          f"({stats.indexed} indexed, {stats.unchanged} unchanged, {stats.removed} removed, "
          f"{stats.skipped} skipped) in {stats.seconds:.1f} s", file=sys.stderr)
    if args.speculative:  # the workspace drafter's table; requests name the workspace
        from tokenfill.context.drafts import workspace_table

        engine.workspace_tables[str(ws.root)], _ = workspace_table(ws.index, engine.tokenizer)
    return spaces


def cmd_complete(args: argparse.Namespace) -> int:
    text = read_source(args.file)
    offset = cursor_offset(text, args.line, args.column, str(args.file))
    request_of(args, "", "")  # bad options fail before the model loads
    engine = load_engine(args)
    spaces = open_workspace(args, args.workspace or repository_of(args.file), engine)
    request = request_of(args, text[:offset], text[offset:], invoked=True,
                         path=str(args.file.resolve()))
    if spaces is not None:
        request, _ = spaces.augment(request)
        spaces.close()
    result = engine.complete(request)
    if result.confidence is not None:
        print(f"confidence {result.confidence:.3f}" + (f", not shown: {result.skipped}"
                                                       if result.skipped else ""), file=sys.stderr)
    print(result.text)
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    import json
    import time

    from tqdm import tqdm

    if not args.input.is_file():
        raise UsageError(f"{args.input}: no such file")
    request_of(args, "", "")  # bad options fail before the model loads
    engine = load_engine(args)
    spaces = open_workspace(args, args.workspace, engine)
    with open(args.input, encoding="utf-8") as f:
        lines = f.read().splitlines()
    done = skipped = forwards = drafted = accepted = 0
    with open(args.output, "w", encoding="utf-8") as out:
        for number, line in enumerate(tqdm(lines, desc="completing", unit="task"), start=1):
            if not line.strip():
                continue
            try:
                task = parse_task(line)
            except ValueError as e:
                tqdm.write(f"{args.input}:{number}: skipped: {e}", file=sys.stderr)
                skipped += 1
                continue
            start = time.perf_counter()
            path = task.get("path")
            full = str(args.workspace / path) if path and args.workspace else path
            request = request_of(args, task["prefix"], task.get("suffix", ""), invoked=True,
                                 path=full)
            if spaces is not None:
                request, got = spaces.augment(request)
            result = engine.complete(request)
            task.update(completion=result.text, ms=round((time.perf_counter() - start) * 1000, 2),
                        tokens=result.tokens, forwards=result.forwards)
            if result.confidence is not None:
                task.update(confidence=round(result.confidence, 4))
            if result.skipped:
                task.update(declined=result.skipped)
            if spaces is not None:
                task.update(context={"chunks": got.chunks, "tokens": got.tokens,
                                     "ms": round(got.ms, 2)})
            if args.speculative:
                task.update(drafted=result.drafted, accepted=result.accepted,
                            mean_accepted=round(result.mean_accepted, 3))
            forwards, drafted, accepted = (forwards + result.forwards, drafted + result.drafted,
                                           accepted + result.accepted)
            out.write(json.dumps(task, ensure_ascii=False) + "\n")
            out.flush()
            done += 1
    if spaces is not None:
        spaces.close()
    print(f"{done} completed, {skipped} skipped -> {args.output}", file=sys.stderr)
    if args.speculative and forwards:
        print(f"speculative: {drafted} tokens drafted, {accepted} accepted, "
              f"{accepted / forwards:.2f} accepted per decoding pass", file=sys.stderr)
    return 0


def parse_task(line: str) -> dict:
    """One batch task; ValueError says what is wrong with it."""
    import json

    try:
        task = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(task, dict):
        raise ValueError("a task must be a JSON object with id, prefix and suffix")
    if "id" not in task:
        raise ValueError("missing field 'id'")
    for key in ("prefix", "suffix", "path"):
        if not isinstance(task.get(key, ""), str):
            raise ValueError(f"field {key!r} must be a string")
    if "prefix" not in task:
        raise ValueError("missing field 'prefix'")
    return task


DEMO_CURSORS = [  # (line, column) in examples/demo.py
    (8, 24), (14, 22), (20, 5), (29, 14),
]


def cmd_demo(args: argparse.Namespace) -> int:
    text = read_source(DEMO_FILE)
    request_of(args, "", "")  # bad options fail before the model loads
    engine = load_engine(args)
    print(f"tokenfill demo: model {args.model}, file {DEMO_FILE.name}\n")
    for line, column in DEMO_CURSORS:
        offset = cursor_offset(text, line, column)
        result = engine.complete(request_of(args, text[:offset], text[offset:]))
        shown = text[:offset].rsplit("\n", 1)[-1]
        print(f"line {line}, column {column}:  {shown}\u2502")
        print(f"  completion ({result.tokens} tokens, {result.total_ms:.0f} ms): {result.text!r}\n")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from tokenfill.serve.app import ServerSettings, create_app
    from tokenfill.serve.transport import with_header_timeout

    for needed in ("config.json", "tokenizer.json"):
        if not (args.model / needed).is_file() and not (args.model.suffix == ".gguf"
                                                         and args.model.is_file()):
            raise UsageError(f"cannot serve {args.model}: no {needed} there")
    if args.slots < 1:
        raise UsageError("--slots must be at least 1")
    workspace = None if args.no_context else args.workspace
    if workspace is not None:
        from tokenfill.context.index import WorkspaceError, check_root

        try:
            workspace = check_root(workspace)
        except WorkspaceError as e:
            raise UsageError(str(e)) from None
    if args.context_tokens is not None and args.context_tokens < 0:
        raise UsageError("--context-tokens must be 0 or more")
    if args.min_confidence is not None and not 0 <= args.min_confidence <= 1:
        raise UsageError("--min-confidence must be from 0 to 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    process.few_arenas()
    settings = ServerSettings(model=args.model, dtype=args.dtype, api_key=args.api_key,
                              max_body_bytes=args.max_body_bytes, n_slots=args.slots,
                              cache_reuse=not args.no_cache_reuse,
                              default_max_tokens=args.max_tokens, cursor_mode=args.cursor_mode,
                              speculative=args.speculative, syntax=args.syntax,
                              host=args.host, allowed_hosts=tuple(args.allowed_host),
                              cors_origins=tuple(args.cors_origin),
                              body_timeout_s=args.body_timeout, workspace=workspace,
                              context_tokens=args.context_tokens,
                              min_confidence=args.min_confidence, engines=tuple(args.engine))
    uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning",
                http=with_header_timeout(args.header_timeout))
    return 0


def cmd_lsp(args: argparse.Namespace) -> int:
    from tokenfill.serve.lsp import main as lsp_main

    process.few_arenas()
    lsp_main(engines=tuple(args.engine))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from tokenfill.train import corpus
    from tokenfill.train.recipe import PRESETS, TrainArgs, train

    if args.preset not in PRESETS:
        raise UsageError(f"--preset: one of {', '.join(PRESETS)}, not {args.preset!r}")
    try:
        train(TrainArgs(run=args.run, out=args.out, preset=args.preset, corpora=args.corpus,
                        environment=args.environment, tokenizer=args.tokenizer, init=args.init,
                        heads=args.heads, decay_fraction=args.decay_fraction,
                        shard_mib=args.shard_mib, repo_rate=args.repo_rate,
                        ngrams=not args.no_ngrams, steps=args.steps,
                        max_minutes=args.max_minutes, batch_size=args.batch_size,
                        seq_len=args.seq_len, vocab_size=args.vocab_size, lr=args.lr,
                        warmup=args.warmup, eval_every=args.eval_every,
                        save_every=args.save_every, workers=args.workers, compile=args.compile,
                        resume=not args.no_resume,
                        cache=args.cache or corpus.DEFAULT_CACHE,
                        benchmark_dir=args.benchmark_data or shared_data(),
                        progress=not args.no_progress))
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    try:
        import matplotlib  # noqa: F401
        import rapidfuzz  # noqa: F401
    except ImportError as e:
        raise UsageError(f"evaluation needs {e.name}: pip install 'tokenfill[eval]'") from None

    from tokenfill.eval import tasks as evaluation

    if args.task == "all":
        from tokenfill.eval.report import run_all

        out = args.out or Path("runs/eval/results.json")
        result = run_all(args.model, seed=args.seed, out=out, dtype=args.dtype,
                         cursor_mode=args.cursor_mode)
        print(f"results in {out}; BENCHMARKS.md updated ({result['minutes']:.1f} min)")
        return 0
    task = evaluation.TASKS.get(args.task)
    if task is None:
        raise UsageError(f"unknown task {args.task!r}; tasks: {', '.join(evaluation.TASKS)}")
    engine = load_engine(args)
    config = evaluation.EvalConfig(limit=args.limit, seed=args.seed, max_tokens=args.max_tokens,
                                   cursor_mode=args.cursor_mode)
    try:
        result = task.run(engine, config)
    except evaluation.TaskSkipped as e:
        print(f"{args.task}: skipped: {e}", file=sys.stderr)
        return 0
    result.update(model=engine.name, parameters=engine.model.config.num_parameters(),
                  limit=args.limit, seed=args.seed)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def cmd_corpus(args: argparse.Namespace) -> int:
    from tokenfill.train import corpus

    try:
        stats = corpus.build(corpus.Manifest.load(), args.out,
                             cache=args.cache or corpus.DEFAULT_CACHE,
                             benchmark_dir=args.benchmark_data or shared_data(),
                             environment=args.environment, workers=args.workers)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        raise UsageError(str(e)) from None
    print(stats)
    print(f"index of every file read: {args.out.name}.index.tsv.gz")
    if args.shards:
        shards = corpus.shard(args.out, args.shards, args.shard_mib << 20)
        size = sum(p.stat().st_size for p in shards)
        print(f"{len(shards)} shards in {args.shards} ({size / 2**20:.1f} MiB)")
    return 0


def gate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, default=BUNDLED_MODEL,
                   help="the checkpoint whose gate is fitted (default: the bundled model)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus", type=Path,
                        help="a built corpus (file or shard folder): its held-out split's files, "
                             "which the model never trained on, give the holes")
    source.add_argument("--telemetry", type=Path,
                        help="the language server's saved outcomes: refit to what this person "
                             "accepted (written to their own gates folder, not the model's)")
    p.add_argument("--per-kind", type=int, default=150,
                   help="holes of each kind to complete (default 150)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None,
                   help="where gate.json goes (default: beside the model; with --telemetry, "
                        "the person's gates folder)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])


def cmd_gate(args: argparse.Namespace) -> int:
    from tokenfill.completion.confidence import Gate, user_gates
    from tokenfill.eval import gate as fitting
    from tokenfill.train import corpus

    if not (args.model / "config.json").is_file():
        raise UsageError(f"{args.model}: no config.json there (not a checkpoint)")
    if args.telemetry is not None:
        if not args.telemetry.is_file():
            raise UsageError(f"{args.telemetry}: no such file")
        try:
            gate = fitting.from_telemetry(args.telemetry, Gate.for_model(args.model))
        except ValueError as e:
            raise UsageError(str(e)) from None
        out = args.out or user_gates() / args.model.resolve().name
    else:
        if not args.corpus.exists():
            raise UsageError(f"{args.corpus}: no such corpus (tokenfill corpus builds one)")
        if args.per_kind < 1:
            raise UsageError("--per-kind must be at least 1")
        paths, texts, _ = corpus.read_with_paths(args.corpus, "heldout")
        if not texts:
            raise UsageError(f"{args.corpus}: no held-out files to fit on")
        args.max_tokens = 1  # load_engine reads only the model options
        engine = load_engine(args)
        engine.gate = None  # completions are observed ungated
        observed = fitting.observe(engine, list(zip(paths, texts)), args.per_kind, args.seed)
        try:
            gate = fitting.calibrate(observed, f"{args.per_kind} holes of each kind from the "
                                               f"held-out split of {args.corpus}")
        except ValueError as e:
            raise UsageError(str(e)) from None
        out = args.out or args.model
    out.mkdir(parents=True, exist_ok=True)
    path = gate.save(out)
    print(f"{path}: threshold {gate.threshold:.3f}, exit under {gate.exit_threshold:.3f}; "
          + ", ".join(f"{k} {v}" for k, v in gate.fitted.items() if k != "refitted_from"))
    return 0


def export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("format", choices=["gguf", "hf"],
                   help="gguf: one file for llama.cpp and Ollama; hf: a folder vLLM and other "
                        "engines of the Hugging Face layout serve as it is")
    p.add_argument("model", type=Path, help="checkpoint directory in Hugging Face layout")
    p.add_argument("out", type=Path, help="the file (gguf) or folder (hf) to write")
    p.add_argument("--dtype", default="f16", choices=["f32", "f16", "bf16", "q8_0"],
                   help="weights' type in the file (default f16; norms and biases stay f32)")


def cmd_export(args: argparse.Namespace) -> int:
    from tokenfill.runtime import gguf_io
    from tokenfill.runtime.checkpoint import CheckpointError, export_hf

    if not (args.model / "config.json").is_file():
        raise UsageError(f"{args.model}: no config.json there (not a checkpoint directory)")
    try:
        if args.format == "hf":
            out = export_hf(args.model, args.out)
            print(f"{out}: weights indexed, end token named in config.json")
            return 0
        out = gguf_io.export(args.model, args.out, args.dtype)
    except (CheckpointError, FileNotFoundError) as e:
        raise UsageError(str(e)) from e
    print(f"{out}: {out.stat().st_size / 2**20:.1f} MiB, {args.dtype}")
    return 0


def cmd_ngrams(args: argparse.Namespace) -> int:
    from tokenfill.train import ngrams

    if not (args.model / "tokenizer.json").is_file():
        raise UsageError(f"{args.model}: no tokenizer.json (a checkpoint directory is needed)")
    try:
        texts = ngrams.source_texts(args.corpus)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from e
    if not texts:
        raise UsageError(f"{args.corpus}: no Python files to count")
    if args.predict < 0:
        raise UsageError("--predict: a number of tokens, 0 or more")
    table = ngrams.build_beside(args.model, texts, min_count=args.min_count,
                                       min_share=args.min_share, predict=args.predict,
                                       source=args.corpus.name)
    by_order = ", ".join(f"{n}: {count:,}" for n, count in table.by_order().items())
    print(f"{args.model / ngrams.FILE}: {len(table):,} contexts ({by_order} tokens long), "
          f"{table.nbytes() / 2**20:.1f} MB, from {len(texts):,} files, "
          f"{table.info['tokens']:,} tokens")
    if "predicted" in table.info:
        read = table.info["predicted"]
        print(f"the model's predictions on {read['tokens']:,} tokens ({read['documents']:,} files) "
              f"gave {read['contexts']:,} contexts")
    return 0


COMMANDS: dict[str, tuple[str, Callable, Callable]] = {  # name: (help, arguments, run)
    "complete": ("print the completion at a cursor in a file",
        complete_arguments, cmd_complete),
    "batch": ("complete every task of a JSON-lines file",
        batch_arguments, cmd_batch),
    "serve": ("serve completions over HTTP (OpenAI, Mistral FIM, "
                                     "llama.cpp /infill, Ollama)",
        serve_arguments, cmd_serve),
    "lsp": ("a language server over stdio (inline completion, completion)",
        lsp_arguments, cmd_lsp),
    "demo": ("complete a few cursors of an example file",
        demo_arguments, cmd_demo),
    "train": ("train the bundled model's recipe",
        train_arguments, cmd_train),
    "eval": ("run a benchmark task (HumanEval pass@1, real-code holes, "
                                    "token accuracy, latency)",
        eval_arguments, cmd_eval),
    "corpus": ("build the training corpus and print what it holds",
        corpus_arguments, cmd_corpus),
    "gate": ("fit a model's confidence gate on held-out code, or refit it to what you accepted",
        gate_arguments, cmd_gate),
    "ngrams": ("build the corpus drafter's n-gram table beside a model "
                       "(speculative decoding)",
        ngrams_arguments, cmd_ngrams),
    "export": ("write a checkpoint for other engines (GGUF for llama.cpp and Ollama, a folder "
               "for vLLM)",
        export_arguments, cmd_export),
}
