"""`tokenfill train`: the bundled model's recipe, from corpus to a checkpoint with its model card.

Steps: build the corpus (corpus.py) if the run has none; train the byte-level BPE tokenizer if the
run has none; train the network on FIM samples (training_data.py) with AdamW and a warm-up +
cosine schedule; evaluate on held-out files every `eval_every` steps; save a resumable state
(safetensors + JSON, no pickle) every `save_every` steps; export the Hugging Face layout plus a
model card. The schedule runs on progress = max(step / steps, elapsed / time budget), so a run
cut short by its time budget still anneals its learning rate before it stops.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from tokenfill.completion import fim
from tokenfill.runtime.checkpoint import save_model
from tokenfill.runtime.hardware import describe_machine, training_autocast, training_precision
from tokenfill.runtime.model import ModelConfig, Transformer
from tokenfill.runtime.tokenizer import Tokenizer, train_bpe
from tokenfill.train import corpus, ngrams
from tokenfill.train.training_data import FimMix, SampleStream

PRESETS: dict[str, dict] = {
    # ~4M parameters: what ~2 hours on 2 CPU cores can train (~15M tokens).
    "small": dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2),
    # ~25M parameters: for a GPU run (~500M tokens is compute-optimal).
    "base": dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                 num_attention_heads=8, num_key_value_heads=2),
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
    vocab_size: int = 4096
    seq_len: int = 768
    batch_size: int = 8
    steps: int = 3000
    max_minutes: float = 0.0           # 0: no time budget
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    eval_every: int = 100
    eval_batches: int = 8
    save_every: int = 100
    seed: int = 1234
    resume: bool = True
    workers: int = 0                   # processes that build batches (0: the training process)
    compile: bool = False              # torch.compile the network (worth it on a GPU)
    manifest: Path = corpus.DEFAULT_MANIFEST
    benchmark_dir: Path | None = None
    progress: bool = True


def lr_at(args: TrainArgs, step: int, progress: float) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    floor = args.lr * args.min_lr_ratio
    return floor + 0.5 * (args.lr - floor) * (1 + math.cos(math.pi * min(progress, 1.0)))


@torch.no_grad()
def evaluate(model: Transformer, batches: list[tuple[torch.Tensor, torch.Tensor]],
             device: torch.device) -> dict[str, float]:
    """Held-out loss and next-token accuracy (argmax == target) over fixed batches."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with training_autocast(device):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
        count += y.numel()
    model.train()
    return {"heldout_loss": loss_sum / count, "heldout_accuracy": correct / count}


def prepare(args: TrainArgs) -> tuple[Path, Tokenizer]:
    """The run's corpus and tokenizer, built on first use."""
    args.run.mkdir(parents=True, exist_ok=True)
    corpus_path = args.run / "corpus.jsonl"
    if not corpus_path.exists():
        stats = corpus.build(corpus.Manifest.load(args.manifest), corpus_path,
                             benchmark_dir=args.benchmark_dir, progress=args.progress)
        print(f"corpus: {stats}")
        (args.run / "corpus_stats.json").write_text(json.dumps(asdict(stats)))
    tok_path = args.run / "tokenizer.json"
    if not tok_path.exists():
        print(f"training a {args.vocab_size}-token BPE tokenizer")
        tok = train_bpe(corpus.read(corpus_path, "train"), args.vocab_size, progress=args.progress)
        tok.save(tok_path)
    return corpus_path, Tokenizer.from_file(tok_path)


class BatchSource(torch.utils.data.IterableDataset):
    """Endless training batches; with several loader workers each draws its own sample stream."""

    def __init__(self, docs: list[str], tok: Tokenizer, fim_tokens, eot: int, mix: FimMix,
                 seed: int, batch_size: int, seq_len: int):
        self.args = (docs, tok, fim_tokens, eot, mix)
        self.seed, self.batch_size, self.seq_len = seed, batch_size, seq_len

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        seed = self.seed if info is None else self.seed * 1000 + info.id
        stream = SampleStream(*self.args, seed=seed)
        while True:
            yield stream.batch(self.batch_size, self.seq_len)


def batches(args: TrainArgs, source: BatchSource):
    if args.workers == 0:
        return iter(source)
    loader = torch.utils.data.DataLoader(source, batch_size=None, num_workers=args.workers,
                                         pin_memory=torch.cuda.is_available(), prefetch_factor=4,
                                         persistent_workers=False)
    return iter(loader)


def save_state(path: Path, model: Transformer, opt: torch.optim.Optimizer, meta: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    names = {id(p): n for n, p in model.named_parameters()}
    opt_tensors = {}
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                opt_tensors[f"{names[id(p)]}/{key}"] = value.detach().cpu().reshape(-1).float() \
                    if key == "step" else value.detach().cpu()
    model_tensors = {k: v.detach().cpu() for k, v in model.state_dict().items()
                     if not (model.config.tie_word_embeddings and k == "lm_head.weight")}
    save_file(model_tensors, str(path / "model.safetensors.tmp"))
    save_file(opt_tensors, str(path / "optimizer.safetensors.tmp"))
    (path / "model.safetensors.tmp").replace(path / "model.safetensors")
    (path / "optimizer.safetensors.tmp").replace(path / "optimizer.safetensors")
    (path / "state.json").write_text(json.dumps(meta, indent=2))


def load_state(path: Path, model: Transformer, opt: torch.optim.Optimizer) -> dict:
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=False)
    tensors = load_file(str(path / "optimizer.safetensors"))
    params = dict(model.named_parameters())
    for key, value in tensors.items():
        name, field = key.rsplit("/", 1)
        p = params[name]
        value = value.to(p.device)
        opt.state[p][field] = value.reshape(()) if field == "step" else value
    return json.loads((path / "state.json").read_text())


def train(args: TrainArgs) -> dict:
    corpus_path, tok = prepare(args)
    fim_tokens = fim.detect(tok)
    eot = tok.token_id("<|endoftext|>")
    assert eot is not None
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = ModelConfig(vocab_size=tok.vocab_size, max_position_embeddings=args.seq_len,
                         tie_word_embeddings=True, **PRESETS[args.preset])
    model = Transformer.init_random(config, seed=args.seed).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), fused=device.type == "cuda")

    train_docs = corpus.read(corpus_path, "train")
    heldout_docs = corpus.read(corpus_path, "heldout")
    mix = FimMix()
    heldout = SampleStream(heldout_docs, tok, fim_tokens, eot, mix, seed=0)
    eval_batches = [heldout.batch(args.batch_size, args.seq_len) for _ in range(args.eval_batches)]

    state_dir = args.run / "state"
    meta = {"step": 0, "tokens": 0, "elapsed_s": 0.0, "evals": []}
    if args.resume and (state_dir / "state.json").exists():
        meta = load_state(state_dir, model, opt)
        print(f"resumed from {state_dir} at step {meta['step']}")
    source = BatchSource(train_docs, tok, fim_tokens, eot, mix, args.seed + meta["step"],
                         args.batch_size, args.seq_len)
    train_batches = batches(args, source)
    network = torch.compile(model) if args.compile else model

    if meta["step"] == 0:
        meta["evals"].append({"step": 0, "tokens": 0, **evaluate(model, eval_batches, device)})
    budget_s = args.max_minutes * 60
    print(f"model: {config.num_parameters() / 1e6:.2f}M parameters, preset {args.preset}; "
          f"device {device}; {len(train_docs)} train / {len(heldout_docs)} held-out files")
    bar = tqdm(total=args.steps, initial=meta["step"], disable=not args.progress,
               unit="step", dynamic_ncols=True)
    model.train()
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
            logits = network(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
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
                      **evaluate(model, eval_batches, device)}
            meta["evals"].append(result)
            bar.write(json.dumps(result))
        if meta["step"] % args.save_every == 0:
            save_state(state_dir, model, opt, meta)
    bar.close()
    final = {"step": meta["step"], "tokens": meta["tokens"], **evaluate(model, eval_batches, device)}
    if meta["evals"] and meta["evals"][-1]["step"] == final["step"]:
        meta["evals"][-1] = final
    else:
        meta["evals"].append(final)
    meta["final"] = final
    save_state(state_dir, model, opt, meta)
    if args.out:
        export(args, model, tok, meta, corpus_path)
    return meta


def export(args: TrainArgs, model: Transformer, tok: Tokenizer, meta: dict, corpus_path: Path) -> None:
    out = args.out
    save_model(model.cpu(), out, fim_layout=FIM_LAYOUT)
    tok.save(out / "tokenizer.json")
    stats_path = args.run / "corpus_stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.exists() else {}
    card = MODEL_CARD.format(
        params=model.config.num_parameters() / 1e6, preset=args.preset,
        config=json.dumps(model.config.to_hf() | {"fim_layout": FIM_LAYOUT}, indent=2), vocab=tok.vocab_size,
        docs=stats.get("kept", "?"), chars=stats.get("chars", 0) / 1e6,
        packages=len(corpus.Manifest.load(args.manifest).packages),
        tokens=meta["tokens"], steps=meta["step"], batch=args.batch_size, seq=args.seq_len,
        minutes=meta["elapsed_s"] / 60, machine=describe_machine(), day=date.today().isoformat(),
        loss=meta["final"]["heldout_loss"], acc=meta["final"]["heldout_accuracy"] * 100,
        tokens_per_param=meta["tokens"] / model.config.num_parameters(), lr=args.lr,
        precision=training_precision(torch.device("cuda" if torch.cuda.is_available() else "cpu")),
        curve="\n".join(f"| {e['step']} | {e['tokens']:,} | {e['heldout_loss']:.3f} | "
                        f"{e['heldout_accuracy'] * 100:.1f}% |" for e in meta["evals"]),
    )
    (out / "README.md").write_text(card)
    (out / "training_log.json").write_text(json.dumps(meta, indent=1))
    # speculative decoding's corpus drafter: what the training code most often has next, and what
    # the model predicts there (on a GPU all of the corpus: its characters outnumber its tokens)
    texts = corpus.read(corpus_path, "train")
    ngrams.build_beside(out, texts, source=corpus_path.name, progress=args.progress,
                               predict=sum(map(len, texts)) if torch.cuda.is_available() else 2_000_000)
    print(f"exported to {out}")


MODEL_CARD = """\
# tokenfill-small

The code model that ships with tokenfill: a {params:.2f}M-parameter Llama-architecture decoder
(preset `{preset}`) trained from scratch by `tokenfill train` for fill-in-the-middle completion of
Python. Hugging Face layout (`config.json`, `model.safetensors` in bf16, `tokenizer.json`).

## Training data
- CPython's standard library (of the interpreter that ran the recipe) and {packages} pure-Python
  packages from PyPI at the versions pinned in `corpus/manifest.toml`.
- Filtered (UTF-8, parses as Python, no line over 400 characters), deduplicated by content, and
  checked against the HumanEval infilling benchmark lines: {docs} files, {chars:.1f}M characters.
- 1% of the files (by content hash) are held out for evaluation.
- Tokenizer: byte-level BPE, {vocab} tokens, trained on the same files, with StarCoder-style FIM
  tokens (`<|endoftext|>`, `<fim_prefix>`, `<fim_middle>`, `<fim_suffix>`, `<fim_pad>`).
- FIM: half of the samples are FIM examples, cut at arbitrary characters (so the cursor often falls
  inside a token), half of those prefix-suffix-middle and half suffix-prefix-middle; half of the
  middles are short (tens of characters), the rest uniform cuts of a ~2,000-character window.
  tokenfill prompts it suffix-prefix-middle (`"fim_layout": "spm"` in config.json), where it
  completes better than prefix-suffix-middle (BENCHMARKS.md).

Beside it, `ngrams.safetensors`: what the training files most often have after each run of one to
six tokens, and what the model itself predicts there, for speculative decoding's corpus drafter
(`tokenfill ngrams`).

## Training
| what | value |
| --- | --- |
| tokens seen | {tokens:,} ({tokens_per_param:.1f} per parameter) |
| steps | {steps} of {batch} x {seq} tokens |
| wall time | {minutes:.0f} min |
| hardware | {machine} |
| precision | {precision} |
| optimiser | AdamW (0.9, 0.95), peak lr {lr}, warm-up then cosine to 10%, weight decay 0.1 |
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
context; it does not solve programming problems. A larger preset (`tokenfill train --preset
base`, ~25M parameters) trades latency for quality with the same recipe.

## Model config
```json
{config}
```
"""
