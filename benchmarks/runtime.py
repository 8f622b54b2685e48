"""`python -m benchmarks runtime`: prefill and decode tokens/s of tokenfill's runtime, of Hugging
Face `transformers` (greedy `generate`) and of llama-server on the same checkpoint, same prompts,
same thread count; checks that the greedy outputs are the same tokens. Then what a user feels:
the time to a completion on held-out holes, tokenfill's engine with its defaults (draft trees on)
against llama-server given the same prompt ids and the same number of tokens, with and without
its own n-gram drafting; and tokenfill's start-up, from launch to a server that answers."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.common import header, interleaved_medians, model_option, same_threads
from tokenfill.paths import REPO_ROOT
from tokenfill.runtime.checkpoint import load_config, load_model
from tokenfill.runtime.generate import generate, prefill
from tokenfill.runtime.hardware import MAX_THREADS, SMALL_PASS, resolve_dtype
from tokenfill.runtime.tokenizer import Tokenizer

PROMPT_LENGTHS = (256, 1024)  # prefill; cut to the model's window where it is shorter
LLAMA_SPECULATION = ("none", "ngram-simple")  # llama-server's --spec-type for the holes


def bench_runtime(model_dir: Path, dtypes: tuple[str, ...] = ("fp32", "bf16"),
                  prompt_lengths: tuple[int, ...] = PROMPT_LENGTHS, new_tokens: int = 128,
                  repeats: int = 8, per_kind: int = 20, max_tokens: int = 64,
                  command: str | None = None) -> str:
    """Markdown tables: prefill and decode tokens/s side by side; per completion; start-up;
    other forms of the runtime. `command`: the command line the header gives."""
    tokenizer = Tokenizer.from_file(model_dir)
    # the package's own source: prompts as long as any window (a prompt's values do not matter)
    source = "\n".join(path.read_text()
                       for path in sorted((REPO_ROOT / "tokenfill").rglob("*.py")))
    ids = tokenizer.encode(source)
    window = load_config(model_dir).max_position_embeddings
    lengths = sorted({min(n, window - 1) for n in prompt_lengths})  # room for one more
    prompts = [ids[:n] for n in lengths]
    short = ids[:32]
    rows = speed_rows(model_dir, dtypes, prompts, short, new_tokens, repeats)
    rows.extend(llama_server_rows(model_dir, prompts, short, new_tokens, repeats,
                                  generate(load_model(model_dir), short, new_tokens).tokens))
    prefill_heads = " | ".join(f"prefill {n:,} tokens, tokens/s" for n in lengths)
    return "\n".join([
        header(command or f"python -m benchmarks runtime{model_option(model_dir)}"),
        f"prefill: one prompt of each length (the model's window is {window:,} tokens); decode: "
        f"{new_tokens} greedy tokens after a 32-token prompt; median of {repeats} rounds, the "
        f"runtimes taking turns; tokenfill and transformers with tokenfill's threads per pass "
        f"({MAX_THREADS} for {SMALL_PASS} tokens or more, 1 below: hardware.py).",
        "",
        "llama-server: the same weights exported as f32 GGUF, the same token ids, its own "
        "timings (median of the rounds), its default threads.",
        "",
        f"| runtime | dtype | {prefill_heads} | decode tokens/s | same greedy tokens |",
        "| --- | --- | " + "--- | " * len(lengths) + "--- | --- |",
        *rows,
        "",
        *per_completion(model_dir, per_kind, max_tokens),
        "",
        start_up(model_dir),
        "",
        *trials(model_dir),
    ])


def speed_rows(model_dir: Path, dtypes: tuple[str, ...], prompts: list[list[int]],
               short: list[int], new_tokens: int, repeats: int) -> list[str]:
    import transformers

    rows = []
    for name in dtypes:
        torch_dtype = resolve_dtype(name)
        ours = load_model(model_dir, torch_dtype)
        hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype).eval()
        hf.generation_config.eos_token_id = None
        hf.generation_config.pad_token_id = 0
        hf.register_forward_pre_hook(same_threads, with_kwargs=True)

        def ours_prefill(prompt):
            def run():
                with torch.inference_mode():  # as the engine runs it (and transformers below)
                    prefill(ours, ours.new_cache(1, len(prompt)), prompt)
            return run

        def hf_prefill(prompt):
            x = torch.tensor([prompt])

            def run():
                with torch.inference_mode():  # the last position's logits, as ours (and generate)
                    hf(x, use_cache=True, logits_to_keep=1)
            return run

        def ours_decode():
            return generate(ours, short, new_tokens).tokens

        def hf_decode():
            with torch.inference_mode():
                out = hf.generate(torch.tensor([short]), max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, do_sample=False)
            return out[0, len(short):].tolist()

        same = ours_decode() == hf_decode()  # also warms both up
        fns = [f(p) for p in prompts for f in (ours_prefill, hf_prefill)]
        for fn in fns:
            fn()
        times = interleaved_medians([*fns, ours_decode, hf_decode], repeats)
        for k, impl in enumerate(("tokenfill", "transformers")):
            rates = " | ".join(f"{len(p) / times[2 * i + k]:,.0f}" for i, p in enumerate(prompts))
            rows.append(f"| {impl} | {name} | {rates} | {new_tokens / times[-2 + k]:,.0f} | "
                        f"{'yes' if same else 'NO'} |")
    return rows


def llama_server_rows(model_dir: Path, prompts: list[list[int]], short: list[int],
                      new_tokens: int, repeats: int, expected: list[int]) -> list[str]:
    """llama-server's prefill and decode rates on the same ids, by its own timings; a row that
    says why where it cannot run here. `expected`: tokenfill's fp32 greedy tokens."""
    import statistics
    import tempfile

    import httpx

    from tokenfill.serve.launch import EngineProcess, engine_missing

    missing = engine_missing("llama.cpp")
    if missing:
        return [f"| llama-server | f32 | {'- | ' * len(prompts)}- | not run: {missing} |"]
    log = Path(tempfile.mkdtemp(prefix="bench-runtime-")) / "llama.log"
    server = EngineProcess("llama.cpp", model_dir, log, slots=1)
    try:
        def ask(ids: list[int], n: int) -> dict:
            return httpx.post(server.url + "/completion", timeout=120, json={
                "prompt": ids, "n_predict": n, "temperature": 0, "cache_prompt": False,
                "ignore_eos": True, "return_tokens": True}).json()

        ask(prompts[0], 1)  # warm-up
        prefill = [statistics.median(ask(prompt, 1)["timings"]["prompt_per_second"]
                                     for _ in range(repeats)) for prompt in prompts]
        runs = [ask(short, new_tokens) for _ in range(repeats)]
        decode = [r["timings"]["predicted_per_second"] for r in runs]
        same = runs[0].get("tokens") == expected
    finally:
        server.stop()
    rates = " | ".join(f"{rate:,.0f}" for rate in prefill)
    return [f"| llama-server | f32 | {rates} | {statistics.median(decode):,.0f} | "
            f"{'yes' if same else 'NO'} |"]


def per_completion(model_dir: Path, per_kind: int, max_tokens: int) -> list[str]:
    """Lines of a table: the time to a completion on held-out holes, tokenfill's engine with its
    defaults against llama-server asked for the same tokens: tokenfill's prompt ids and as many
    tokens as tokenfill generated, greedy, prompt cache off, once per `LLAMA_SPECULATION`."""
    import statistics
    import tempfile

    import httpx

    from benchmarks.engines import KINDS, window
    from tokenfill.completion.engine import Engine
    from tokenfill.completion.request import CompletionRequest
    from tokenfill.eval import holes as holes_mod
    from tokenfill.eval import realcode
    from tokenfill.eval.stats import percentile
    from tokenfill.runtime.slots import SlotPool
    from tokenfill.serve.launch import EngineProcess, engine_missing

    holes = [window(h) for kind in KINDS
             for h in holes_mod.cut(realcode.files(), kind, per_kind, seed=0)]
    engine = Engine.load(model_dir)
    slots = SlotPool(engine.model, 1, engine.context)  # as the server runs it

    def request(hole) -> CompletionRequest:
        return CompletionRequest(prefix=hole.prefix, suffix=hole.suffix, max_tokens=max_tokens,
                                 min_confidence=0)  # every completion shown: all are timed

    engine.complete(request(holes[0]), slots=slots)  # first-request costs out of the figures
    asked = []  # (prompt ids, tokens generated, tokenfill ms)
    declined = 0
    for hole in holes:
        made = engine.complete(request(hole), slots=slots)
        if made.skipped:  # syntax-aware completion wrote nothing here: nothing to compare
            declined += 1
            continue
        prompt = engine.prompt(request(hole), min(max_tokens, engine.context // 2))
        asked.append((prompt.ids, max(made.tokens, 1), made.total_ms))
    if not asked:
        return [f"Per completion: syntax-aware completion declined all {len(holes)} holes."]
    rows = [("tokenfill, defaults (draft trees)", [ms for _, _, ms in asked], "")]
    missing = engine_missing("llama.cpp")
    logs = Path(tempfile.mkdtemp(prefix="bench-runtime-"))
    for spec in LLAMA_SPECULATION if not missing else ():
        server = EngineProcess("llama.cpp", model_dir, logs / f"llama-{spec}.log", slots=1,
                               env={} if spec == "none" else {"LLAMA_ARG_SPEC_TYPE": spec})
        try:
            times, drafted, accepted = [], 0, 0
            with httpx.Client(timeout=120) as client:
                for k, (ids, n, _) in enumerate([asked[0], *asked]):
                    timings = client.post(server.url + "/completion", json={
                        "prompt": ids, "n_predict": n, "temperature": 0, "cache_prompt": False,
                        "ignore_eos": True}).json()["timings"]
                    if k:  # the first is a warm-up
                        times.append(timings["prompt_ms"] + timings["predicted_ms"])
                        drafted += timings.get("draft_n", 0)
                        accepted += timings.get("draft_n_accepted", 0)
        finally:
            server.stop()
        note = (f"{accepted}/{drafted} drafted tokens accepted" if spec != "none"
                else "no drafting")
        rows.append((f"llama-server, --spec-type {spec}", times, note))
    tokens = statistics.mean(n for _, n, _ in asked)
    lines = [f"Per completion: {len(asked)} held-out holes ({per_kind} each of "
             f"{', '.join(KINDS)}; {declined} that syntax-aware completion declines left out), "
             f"up to {max_tokens} tokens, {tokens:.1f} generated on average. tokenfill: its "
             "engine in-process with the defaults (exact cursor, draft trees, syntax-aware "
             "stops), total time; llama-server: the same prompt ids and as many tokens, greedy, "
             "prompt cache off, its own prompt + generation time.",
             "",
             "| side | ms p50 | ms p95 | |", "| --- | --- | --- | --- |"]
    lines += [f"| {name} | {percentile(ms, 0.5):.1f} | {percentile(ms, 0.95):.1f} | {note} |"
              for name, ms, note in rows]
    if missing:
        lines.append(f"| llama-server | - | - | not run: {missing} |")
    return lines


def start_up(model_dir: Path, rounds: int = 3) -> str:
    """The line on tokenfill's start-up: from launching `tokenfill serve` to a server whose
    /health answers 200 (the model loaded), median of `rounds`."""
    import statistics
    import tempfile
    import time

    from tokenfill.serve.launch import ServerProcess

    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(rounds):
            t0 = time.perf_counter()
            server = ServerProcess(model_dir, Path(tmp) / f"start-{k}.log")
            times.append(time.perf_counter() - t0)
            server.stop()
    return (f"Start-up: `tokenfill serve` launched to /health answering 200, median of {rounds}: "
            f"{statistics.median(times):.2f} s (target < 3 s).")



def trials(model_dir: Path, cached: int = 300, rounds: int = 200) -> list[str]:
    """Lines of tables: other forms of the in-process runtime, kept out of the defaults where they
    measured slower. A decoding step (one token after `cached`) and a draft tree's pass (8
    tokens) on one thread, as the runtime runs them; then a decoding step's products alone, the
    weights in fp32, bf16 and int8 (weight-only, PyTorch's kernel for it)."""
    import time

    from tokenfill.runtime.hardware import use_threads_for

    ids = torch.randint(0, load_config(model_dir).vocab_size, (1, cached + 8),
                        generator=torch.Generator().manual_seed(0))
    use_threads_for(1)
    forms = {"eager, fp32 (the default here)": (load_model(model_dir, torch.float32), ""),
             "eager, bf16": (load_model(model_dir, torch.bfloat16), "")}
    try:
        plain = load_model(model_dir, torch.float32)
        plain.packed_output = None  # oneDNN's packed product is not one inductor can lower
        compiled = torch.compile(plain, dynamic=True)
        start = time.perf_counter()
        with torch.inference_mode():
            for tokens in (1, 8, 1):  # both shapes
                compiled(ids[:, :tokens], 0, compiled.new_cache(1, cached + 8))
        forms["torch.compile (inductor), fp32"] = (
            compiled, f"compiled in {time.perf_counter() - start:.0f} s")
    except Exception as e:  # noqa: BLE001 - no C++ compiler here, or a backend error: say so
        forms["torch.compile (inductor), fp32"] = (None, f"not run: {str(e).splitlines()[0]}")
    fns, keys = [], []
    for name, (model, _) in forms.items():
        if model is None:
            continue
        cache = model.new_cache(1, cached + 8)
        with torch.inference_mode():
            model(ids[:, :cached], 0, cache)
        for tokens in (1, 8):
            def run(model=model, cache=cache, tokens=tokens):
                with torch.inference_mode():
                    model(ids[:, cached:cached + tokens], cached, cache)
            fns.append(run)
            keys.append((name, tokens))
    times = dict(zip(keys, interleaved_medians(fns, rounds)))
    lines = [f"Other forms of the runtime: one thread, a decoding step after {cached} cached "
             f"tokens and a draft tree's pass of 8, median of {rounds} rounds, the forms taking "
             "turns:",
             "", "| form | decoding step ms | 8-token pass ms | |", "| --- | --- | --- | --- |"]
    for name, (_, note) in forms.items():
        if (name, 1) in times:
            lines.append(f"| {name} | {times[name, 1] * 1000:.2f} | {times[name, 8] * 1000:.2f} "
                         f"| {note} |")
        else:
            lines.append(f"| {name} | - | - | {note} |")
    return [*lines, "", *weight_forms(forms["eager, fp32 (the default here)"][0], rounds)]


def weight_forms(model, rounds: int) -> list[str]:
    """Lines of a table: one decoding step's products (one row times each projection of every
    layer, and the output layer) with the weights in fp32, bf16 and int8 weight-only."""
    import torch.nn.functional as F

    weights = [module.weight.detach() for module in model.modules()
               if isinstance(module, torch.nn.Linear)]
    forms = {"fp32": [], "bf16": [], "int8 weight-only": []}
    for w in weights:
        x = torch.randn(1, w.shape[1])
        bf16_x, bf16_w = x.bfloat16(), w.bfloat16()
        scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127
        int8_w = (w / scales[:, None]).round().to(torch.int8).contiguous()
        forms["fp32"].append(lambda x=x, w=w: F.linear(x, w))
        forms["bf16"].append(lambda x=bf16_x, w=bf16_w: F.linear(x, w))
        forms["int8 weight-only"].append(
            lambda x=x, w=int8_w, s=scales: torch.ops.aten._weight_int8pack_mm(x, w, s))
    lines = [f"One decoding step's products alone ({len(weights)} of them, one row each, every "
             f"weight in turn), median of {rounds} rounds:",
             "", "| weights | products' ms per step |", "| --- | --- |"]
    for name, products in forms.items():
        try:
            def step(products=products):
                with torch.inference_mode():
                    for product in products:
                        product()
            step()
            lines.append(f"| {name} | {interleaved_medians([step], rounds)[0] * 1000:.3f} |")
        except RuntimeError as e:  # a kernel this build of torch lacks
            lines.append(f"| {name} | not run: {str(e).splitlines()[0]} |")
    return lines


def preset_checkpoint(preset: str, directory: Path, context: int = 2048, seed: int = 0) -> Path:
    """A checkpoint of a training preset's shape with random weights, the bundled model's
    tokenizer and FIM layout, in `directory`: the runtime's speed on a model not trained yet
    (the texts it writes mean nothing)."""
    import shutil

    from tokenfill.paths import BUNDLED_MODEL
    from tokenfill.runtime.checkpoint import fim_layout, save_model
    from tokenfill.runtime.model import ModelConfig, Transformer
    from tokenfill.train.recipe import PRESETS, padded_vocab

    tokenizer = Tokenizer.from_file(BUNDLED_MODEL)
    config = ModelConfig(vocab_size=padded_vocab(tokenizer.vocab_size),
                         max_position_embeddings=context, tie_word_embeddings=True,
                         **PRESETS[preset])
    directory.mkdir(parents=True, exist_ok=True)
    save_model(Transformer.init_random(config, seed=seed), directory,
               fim_layout=fim_layout(BUNDLED_MODEL))
    for name in ("tokenizer.json", "ngrams.safetensors"):  # the tokenizer's, not the weights'
        if (BUNDLED_MODEL / name).exists():
            shutil.copy(BUNDLED_MODEL / name, directory / name)
    return directory
