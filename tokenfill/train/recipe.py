"""`tokenfill train`: the bundled model's recipe, from corpus to a checkpoint with its model card.

Steps: build the corpus (corpus.py) if the run is given none; train the byte-level BPE tokenizer
if the run is given none; train the network on FIM samples (training_data.py) with AdamW, and
beside it `heads` multi-token prediction heads (heads.py); evaluate on held-out files every
`eval_every` steps; save a resumable state (safetensors + JSON, no pickle) every `save_every`
steps; export the Hugging Face layout (weights in files of at most `shard_mib` MiB) plus the heads
and a model card.

The learning rate warms up, stays, and decays over the last `decay_fraction` of the run
(warmup-stable-decay). The schedule runs on progress = max(step / steps, elapsed / time budget),
so a run cut short by its time budget still anneals before it stops. A GPU is lent for minutes at
a time with limits on what travels, so a run can start from an earlier run's exported weights
(`init`): the optimizer starts afresh, warms up again and decays again at the end.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor
from tqdm import tqdm

from tokenfill.completion import fim
from tokenfill.runtime.checkpoint import load_model, save_model
from tokenfill.runtime.hardware import describe_machine, training_autocast, training_precision
from tokenfill.runtime.heads import FutureHeads, load_heads, save_heads
from tokenfill.runtime.model import ModelConfig, Transformer
from tokenfill.runtime.tokenizer import Tokenizer, train_bpe
from tokenfill.train import corpus, ngrams
from tokenfill.train.training_data import FimMix, SampleStream

PRESETS: dict[str, dict] = {
    # ~4M parameters: what ~2 hours on 2 CPU cores can train (~15M tokens).
    "small": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2),
    # ~19M parameters with a 16k vocabulary (12.6M in the layers).
    "mid": dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=8,
                num_attention_heads=6, num_key_value_heads=2),
    # ~25M parameters with a 16k vocabulary (16.8M in the layers).
    "base": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                 num_attention_heads=8, num_key_value_heads=2),
    # ~54M parameters with a 16k vocabulary (43M in the layers).
    "large": dict(hidden_size=640, intermediate_size=1728, num_hidden_layers=10,
                  num_attention_heads=10, num_key_value_heads=2),
    # For tests.
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2),
}


# The recipe trains both FIM layouts; its models complete better from suffix-prefix-middle
# prompts, where the prefix runs straight into the middle (BENCHMARKS.md), so exports ask for it.
FIM_LAYOUT = "spm"


@dataclass
class TrainArgs:
    run: Path
    out: Path | None = None
    preset: str = "small"
    # built corpora (files or folders of shards); none: run/corpus.jsonl, built on first use
    corpora: list[Path] = field(default_factory=list)
    environment: bool = False          # also the installed packages the manifest does not list
    tokenizer: Path | None = None      # none: run/tokenizer.json, trained on first use
    init: Path | None = None           # start from these exported weights (and heads)
    vocab_size: int = 4096
    seq_len: int = 768
    batch_size: int = 8
    steps: int = 3000
    max_minutes: float = 0.0           # 0: no time budget
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    decay_fraction: float = 0.2        # the last share of the run anneals (warmup-stable-decay)
    weight_decay: float = 0.1
    heads: int = 0                     # multi-token prediction heads trained beside the model
    head_weight: float = 0.1           # their loss's weight (head k: this times 0.8^(k-1))
    head_share: int = 4                # heads are trained on every head_share-th position
    eval_every: int = 100
    eval_batches: int = 8
    save_every: int = 100
    shard_mib: float = 16              # exported weight files of at most this size
    repo_rate: float = 0.3             # FIM samples given other files' context (training_data)
    ngrams: bool = True                # build the corpus drafter's table beside the export
    seed: int = 1234
    resume: bool = True
    workers: int = 0                   # processes that build batches (0: the training process)
    compile: bool = False              # torch.compile the network (worth it on a GPU)
    manifest: Path = corpus.DEFAULT_MANIFEST
    cache: Path = corpus.DEFAULT_CACHE  # downloaded wheels (the held-out ones, offline)
    benchmark_dir: Path | None = None
    progress: bool = True


def lr_at(args: TrainArgs, step: int, progress: float) -> float:
    """Warm-up, then the peak, then 1 - sqrt decay to the floor over the last decay_fraction."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    floor = args.lr * args.min_lr_ratio
    stable = 1.0 - args.decay_fraction
    if progress <= stable:
        return args.lr
    t = min((progress - stable) / max(args.decay_fraction, 1e-9), 1.0)
    return floor + (args.lr - floor) * (1.0 - math.sqrt(t))


def head_losses(model: Transformer, heads: FutureHeads, hidden: Tensor, y: Tensor, share: int,
                offset: int = 0) -> list[Tensor]:
    """Each head's cross-entropy: head k at position t against the token at t + 1 + k
    (y[:, t + k]), on every `share`-th position from `offset` (the output layer over the whole
    vocabulary for every position and head would cost as much as the model)."""
    T = hidden.shape[1]
    losses = []
    for k, h in enumerate(heads(hidden[:, offset:T:share]), start=1):
        positions = torch.arange(offset, T, share, device=hidden.device)
        keep = positions + k < T
        logits = model.output(h[:, keep]).float()
        target = y[:, positions[keep] + k]
        losses.append(F.cross_entropy(logits.flatten(0, 1), target.flatten()))
    return losses


@torch.no_grad()
def evaluate(model: Transformer, batches: list[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device, heads: FutureHeads | None = None) -> dict:
    """Held-out loss and next-token accuracy (argmax == target) over fixed batches, and each
    head's top-1 accuracy at guessing its token."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    head_hits = [0] * (len(heads) if heads is not None else 0)
    head_count = [0] * len(head_hits)
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with training_autocast(device):
            hidden = model(x, hidden=True)
            logits = model.output(hidden).float()
            loss_sum += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
            correct += (logits.argmax(-1) == y).sum().item()
            count += y.numel()
            if heads is not None:
                T = hidden.shape[1]
                for k, h in enumerate(heads(hidden), start=1):
                    guess = model.output(h[:, :T - k]).argmax(-1)
                    head_hits[k - 1] += (guess == y[:, k:]).sum().item()
                    head_count[k - 1] += guess.numel()
    model.train()
    result = {"heldout_loss": loss_sum / count, "heldout_accuracy": correct / count}
    if head_hits:
        result["head_accuracy"] = [h / max(c, 1) for h, c in zip(head_hits, head_count)]
    return result


def prepare(args: TrainArgs) -> tuple[list[Path], Tokenizer]:
    """The run's corpora and tokenizer, built on first use."""
    args.run.mkdir(parents=True, exist_ok=True)
    corpora = list(args.corpora)
    if not corpora:
        corpora.append(args.run / "corpus.jsonl")
        if not corpora[0].exists():
            stats = corpus.build(corpus.Manifest.load(args.manifest), corpora[0],
                                 cache=args.cache, benchmark_dir=args.benchmark_dir,
                                 progress=args.progress)
            print(f"corpus: {stats}")
    missing = [str(p) for p in corpora if not p.exists()]
    if missing:
        raise FileNotFoundError(f"no corpus at {', '.join(missing)} (build one with "
                                f"`tokenfill corpus`)")
    if args.environment:
        installed = args.run / "environment.jsonl"
        if not installed.exists():
            stats = corpus.build(corpus.Manifest.load(args.manifest), installed,
                                 cache=args.cache, benchmark_dir=args.benchmark_dir,
                                 wheels=False, stdlib=False,
                                 environment=True, workers=max(1, (os.cpu_count() or 2) - 1),
                                 progress=args.progress)
            print(f"installed packages: {stats}")
        corpora.append(installed)
    tok_path = args.tokenizer or args.run / "tokenizer.json"
    if not tok_path.exists():
        print(f"training a {args.vocab_size}-token BPE tokenizer")
        texts = [t for path in corpora for t in corpus.read(path, "train")]
        tok = train_bpe(texts, args.vocab_size, progress=args.progress,
                        repository_tokens=True)
        tok.save(tok_path)
    return corpora, Tokenizer.from_file(tok_path)


class BatchSource(torch.utils.data.IterableDataset):
    """Endless training batches; with several loader workers each draws its own sample stream."""

    def __init__(self, docs: list[str], tok: Tokenizer, fim_tokens, eot: int, mix: FimMix,
                 seed: int, batch_size: int, seq_len: int, paths: list[str] | None = None,
                 spans: list[list | None] | None = None):
        self.args = (docs, tok, fim_tokens, eot, mix)
        self.paths, self.spans = paths, spans
        self.seed, self.batch_size, self.seq_len = seed, batch_size, seq_len

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        seed = self.seed if info is None else self.seed * 1000 + info.id
        stream = SampleStream(*self.args, seed=seed, paths=self.paths, spans=self.spans)
        while True:
            yield stream.batch(self.batch_size, self.seq_len)


def batches(args: TrainArgs, source: BatchSource):
    if args.workers == 0:
        return iter(source)
    loader = torch.utils.data.DataLoader(source, batch_size=None, num_workers=args.workers,
                                         pin_memory=torch.cuda.is_available(), prefetch_factor=4,
                                         persistent_workers=False)
    return iter(loader)


def save_state(path: Path, net: torch.nn.Module, opt: torch.optim.Optimizer, meta: dict) -> None:
    """The weights (model and heads), the optimizer's moments and the progress, each file
    replaced whole so that a run killed mid-save resumes from the previous state."""
    path.mkdir(parents=True, exist_ok=True)
    names = {id(p): n for n, p in net.named_parameters()}
    opt_tensors = {}
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                opt_tensors[f"{names[id(p)]}/{key}"] = value.detach().cpu().reshape(-1).float() \
                    if key == "step" else value.detach().cpu()
    net_tensors = {k: v.detach().cpu() for k, v in net.state_dict().items()
                   if k not in _tied(net)}
    save_file(net_tensors, str(path / "model.safetensors.tmp"))
    save_file(opt_tensors, str(path / "optimizer.safetensors.tmp"))
    (path / "model.safetensors.tmp").replace(path / "model.safetensors")
    (path / "optimizer.safetensors.tmp").replace(path / "optimizer.safetensors")
    (path / "state.json").write_text(json.dumps(meta, indent=2))


def _tied(net: torch.nn.Module) -> set[str]:
    model = net["model"]
    return {"model.lm_head.weight"} if model.config.tie_word_embeddings else set()


def load_state(path: Path, net: torch.nn.Module, opt: torch.optim.Optimizer) -> dict:
    net.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
    tensors = load_file(str(path / "optimizer.safetensors"))
    params = dict(net.named_parameters())
    for key, value in tensors.items():
        name, field = key.rsplit("/", 1)
        p = params[name]
        value = value.to(p.device)
        opt.state[p][field] = value.reshape(()) if field == "step" else value
    return json.loads((path / "state.json").read_text())


def build_network(args: TrainArgs, tok: Tokenizer) -> torch.nn.ModuleDict:
    """The model (fresh, or `init`'s weights) and its heads, as one module for the optimizer."""
    if args.init is not None:
        model = load_model(args.init, torch.float32)
        model.packed_output = None  # inference-only layouts: training updates plain weights
        with torch.no_grad():
            for p in model.parameters():
                p.data = p.data.contiguous()
        if model.config.vocab_size != padded_vocab(tok.vocab_size):
            raise ValueError(f"{args.init} has a {model.config.vocab_size}-token vocabulary, the "
                             f"tokenizer {tok.vocab_size} (padded: {padded_vocab(tok.vocab_size)})")
        heads = load_heads(args.init, model.config.hidden_size) if args.heads else None
        if heads is not None and len(heads) != args.heads:
            heads = None  # another count: the heads start afresh
    else:
        config = ModelConfig(vocab_size=padded_vocab(tok.vocab_size),
                             max_position_embeddings=args.seq_len,
                             tie_word_embeddings=True, **PRESETS[args.preset])
        model = Transformer.init_random(config, seed=args.seed)
        heads = None
    if args.heads and heads is None:
        heads = FutureHeads(model.config.hidden_size, args.heads)
    net = torch.nn.ModuleDict({"model": model})
    if heads is not None:
        net["heads"] = heads.float()
    return net.train()


def padded_vocab(size: int) -> int:
    """The model's vocabulary: the tokenizer's, rounded up to a multiple of 64 (matrix shapes the
    GPU's kernels prefer; the engine never picks an id the tokenizer lacks)."""
    return -(-size // 64) * 64


def train(args: TrainArgs) -> dict:
    corpora, tok = prepare(args)
    fim_tokens = fim.detect(tok)
    eot = tok.token_id("<|endoftext|>")
    assert eot is not None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = build_network(args, tok).to(device)
    model: Transformer = net["model"]
    heads: FutureHeads | None = net["heads"] if "heads" in net else None
    config = model.config
    decay = [p for n, p in net.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in net.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")

    train_paths, train_docs, train_spans = [], [], []
    heldout_paths, heldout_docs, heldout_spans = [], [], []
    for path in corpora:
        for split, lists in (("train", (train_paths, train_docs, train_spans)),
                             ("heldout", (heldout_paths, heldout_docs, heldout_spans))):
            for into, values in zip(lists, corpus.read_with_paths(path, split)):
                into += values
    mix = FimMix(repo_rate=args.repo_rate)
    heldout = SampleStream(heldout_docs, tok, fim_tokens, eot, mix, seed=0, paths=heldout_paths,
                           spans=heldout_spans)
    eval_batches = [heldout.batch(args.batch_size, args.seq_len) for _ in range(args.eval_batches)]

    state_dir = args.run / "state"
    meta = {"step": 0, "tokens": 0, "elapsed_s": 0.0, "evals": [],
            "init": str(args.init) if args.init else None}
    if args.resume and (state_dir / "state.json").exists():
        meta = load_state(state_dir, net, opt)
        print(f"resumed from {state_dir} at step {meta['step']}")
    source = BatchSource(train_docs, tok, fim_tokens, eot, mix, args.seed + meta["step"],
                         args.batch_size, args.seq_len, paths=train_paths, spans=train_spans)
    train_batches = batches(args, source)
    network = torch.compile(model) if args.compile else model

    if meta["step"] == 0:
        meta["evals"].append({"step": 0, "tokens": 0,
                              **evaluate(model, eval_batches, device, heads)})
    budget_s = args.max_minutes * 60
    print(f"model: {config.num_parameters() / 1e6:.2f}M parameters"
          f"{f', {args.heads} heads' if heads is not None else ''}, preset {args.preset}; "
          f"device {device}; {len(train_docs)} train / {len(heldout_docs)} held-out files")
    bar = tqdm(total=args.steps, initial=meta["step"], disable=not args.progress,
               unit="step", dynamic_ncols=True)
    net.train()
    start = time.time() - meta["elapsed_s"]
    while meta["step"] < args.steps:
        elapsed = time.time() - start
        progress = max(meta["step"] / args.steps, elapsed / budget_s if budget_s else 0.0)
        if budget_s and elapsed >= budget_s:
            print(f"time budget of {args.max_minutes} min reached at step {meta['step']}")
            break
        for group in opt.param_groups:
            group["lr"] = lr_at(args, meta["step"], progress)
        x, y = next(train_batches)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with training_autocast(device):
            hidden = network(x, hidden=True)
            logits = model.output(hidden)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            total = loss
            if heads is not None:
                offset = meta["step"] % args.head_share
                for k, head_loss in enumerate(head_losses(model, heads, hidden, y,
                                                          args.head_share, offset)):
                    total = total + args.head_weight * 0.8 ** k * head_loss
        total.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        meta["step"] += 1
        meta["tokens"] += x.numel()
        meta["elapsed_s"] = time.time() - start
        bar.update(1)
        if meta["step"] % 10 == 0:  # reading the loss waits for the device
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{opt.param_groups[0]['lr']:.1e}",
                            tok_s=f"{meta['tokens'] / max(meta['elapsed_s'], 1e-9):.0f}")
        if meta["step"] % args.eval_every == 0:
            result = {"step": meta["step"], "tokens": meta["tokens"], "train_loss": loss.item(),
                      "elapsed_s": round(meta["elapsed_s"], 1),
                      **evaluate(model, eval_batches, device, heads)}
            meta["evals"].append(result)
            bar.write(json.dumps(result))
        if meta["step"] % args.save_every == 0:
            save_state(state_dir, net, opt, meta)
    bar.close()
    final = {"step": meta["step"], "tokens": meta["tokens"],
             **evaluate(model, eval_batches, device, heads)}
    if meta["evals"] and meta["evals"][-1]["step"] == final["step"]:
        meta["evals"][-1] = final
    else:
        meta["evals"].append(final)
    meta["final"] = final
    meta["corpus"] = [str(p) for p in corpora]
    save_state(state_dir, net, opt, meta)
    if args.out:
        export(args, model, heads, tok, meta, corpora)
    return meta


def export(args: TrainArgs, model: Transformer, heads: FutureHeads | None, tok: Tokenizer,
           meta: dict, corpora: list[Path]) -> None:
    out = args.out
    save_model(model.cpu(), out, fim_layout=FIM_LAYOUT, max_shard_bytes=int(args.shard_mib * 2**20))
    if heads is not None:
        save_heads(heads, out)
    tok.save(out / "tokenizer.json")
    (out / "training_log.json").write_text(json.dumps(meta, indent=1))
    write_card(out, args, model, meta, corpora)
    if args.ngrams:
        # speculative decoding's corpus drafter: what the training code most often has next,
        # and what the model predicts there (on a GPU all of the corpus: its characters
        # outnumber its tokens)
        texts = [t for path in corpora for t in corpus.read(path, "train")]
        ngrams.build_beside(out, texts, source=corpora[0].name, progress=args.progress,
                            predict=sum(map(len, texts)) if torch.cuda.is_available()
                            else 2_000_000)
    print(f"exported to {out}")


def corpus_stats(corpora: list[Path]) -> dict:
    """What the corpora's builds say they hold (their .stats.json), added up."""
    total = {"kept": 0, "chars": 0, "sources": 0}
    for path in corpora:
        stats_path = path.with_name(path.name + ".stats.json") if path.is_file() else \
            path / "stats.json"
        if stats_path.is_file():
            stats = json.loads(stats_path.read_text())
            total["kept"] += stats.get("kept", 0)
            total["chars"] += stats.get("chars", 0)
            total["sources"] += len(stats.get("sources", {}))
    return total


def write_card(out: Path, args: TrainArgs, model: Transformer, meta: dict,
               corpora: list[Path]) -> None:
    stats = corpus_stats(corpora)
    final = meta["final"]
    heads = final.get("head_accuracy")
    card = MODEL_CARD.format(
        params=model.config.num_parameters() / 1e6, preset=args.preset,
        config=json.dumps(model.config.to_hf() | {"fim_layout": FIM_LAYOUT}, indent=2),
        vocab=model.config.vocab_size, docs=stats["kept"] or "?", chars=stats["chars"] / 1e6,
        sources=stats["sources"] or "?", corpora=", ".join(f"`{p.name}`" for p in corpora),
        tokens=meta["tokens"], steps=meta["step"], batch=args.batch_size, seq=args.seq_len,
        minutes=meta["elapsed_s"] / 60, machine=describe_machine(), day=date.today().isoformat(),
        loss=final["heldout_loss"], acc=final["heldout_accuracy"] * 100,
        tokens_per_param=meta["tokens"] / model.config.num_parameters(), lr=args.lr,
        init=f"from `{meta['init']}`" if meta.get("init") else "from scratch",
        precision=training_precision(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
        heads=("none" if heads is None else
               f"{len(heads)} (`heads.safetensors`), top-1 accuracy at guessing their tokens: "
               + ", ".join(f"+{k + 2}: {a * 100:.1f}%" for k, a in enumerate(heads))),
        curve="\n".join(f"| {e['step']} | {e['tokens']:,} | {e['heldout_loss']:.3f} | "
                        f"{e['heldout_accuracy'] * 100:.1f}% |" for e in meta["evals"]),
    )
    (out / "README.md").write_text(card)


MODEL_CARD = """\
# tokenfill-small

The code model that ships with tokenfill: a {params:.2f}M-parameter Llama-architecture decoder
(preset `{preset}`) trained {init} by `tokenfill train` for fill-in-the-middle completion of
Python. Hugging Face layout (`config.json`, the weights in bf16 safetensors, `tokenizer.json`).

## Training data
- Corpora: {corpora}. CPython's standard library and the PyPI packages pinned in
  `corpus/manifest.toml` (the build's index lists every file and what became of it), and where the
  run read them, the packages installed on the training machine: {sources} sources.
- Filtered (UTF-8, parses as Python, no line over 400 characters, not generated, not a data
  table, not vendored), deduplicated (content hash and MinHash near duplicates), checked against
  the HumanEval infilling benchmark lines and against the held-out packages of
  `corpus/heldout.toml`: {docs} files, {chars:.1f}M characters.
- 1% of the files (by content hash) are held out for evaluation.
- Tokenizer: byte-level BPE, {vocab} tokens, with StarCoder-style FIM tokens (`<|endoftext|>`,
  `<fim_prefix>`, `<fim_middle>`, `<fim_suffix>`, `<fim_pad>`).
- FIM: 70% of the samples are FIM examples, half prefix-suffix-middle and half
  suffix-prefix-middle. 60% of the middles are units editors ask for (the rest of a line, a whole
  line, a few lines, a block body, a call's arguments) ending where the unit ends; the rest are
  cut at arbitrary characters, half short, half uniform. tokenfill prompts it
  suffix-prefix-middle (`"fim_layout": "spm"` in config.json).

Multi-token heads: {heads}.

## Training
| what | value |
| --- | --- |
| tokens seen | {tokens:,} ({tokens_per_param:.1f} per parameter) |
| steps | {steps} of {batch} x {seq} tokens |
| wall time | {minutes:.0f} min |
| hardware | {machine} |
| precision | {precision} |
| optimiser | AdamW (0.9, 0.95), peak lr {lr}, warm-up, stable, 1 - sqrt decay to 10%, weight decay 0.1 |
| date | {day} |

## Held-out results
Final held-out loss **{loss:.3f}** nats/token, next-token accuracy **{acc:.1f}%**
(held-out files, same FIM mix as training).

| step | tokens | held-out loss | next-token accuracy |
| --- | --- | --- | --- |
{curve}

## Limits
This model is small on purpose: a decoding step costs a few milliseconds on two CPU cores, so
completions keep up with typing on a laptop. It completes common Python idioms and names from the
context; it does not solve programming problems.

## Model config
```json
{config}
```
"""
