"""`python -m benchmarks runtime`: prefill and decode tokens/s of tokenfill's runtime and of
Hugging Face `transformers` (greedy `generate`) on the same checkpoint, same prompt, same thread
count; checks that both greedy outputs are the same tokens."""

from __future__ import annotations

from pathlib import Path

import torch

from benchmarks.common import header, interleaved_medians, model_option, same_threads
from tokenfill.paths import REPO_ROOT
from tokenfill.runtime.checkpoint import load_model
from tokenfill.runtime.generate import generate, prefill
from tokenfill.runtime.hardware import MAX_THREADS, SMALL_PASS, resolve_dtype
from tokenfill.runtime.tokenizer import Tokenizer


def bench_runtime(model_dir: Path, dtypes: tuple[str, ...] = ("fp32", "bf16"), prompt_len: int = 256,
                  new_tokens: int = 128, repeats: int = 8) -> str:
    """A markdown table: prefill and decode tokens/s, ours vs transformers."""
    import transformers

    tokenizer = Tokenizer.from_file(model_dir)
    source = (REPO_ROOT / "tokenfill" / "runtime" / "model.py").read_text()
    ids = tokenizer.encode(source)
    prompt = ids[:prompt_len]
    short = ids[:32]
    rows = []
    for name in dtypes:
        torch_dtype = resolve_dtype(name)
        ours = load_model(model_dir, torch_dtype)
        hf = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype).eval()
        hf.generation_config.eos_token_id = None
        hf.generation_config.pad_token_id = 0
        hf.register_forward_pre_hook(same_threads, with_kwargs=True)
        x = torch.tensor([prompt])

        def ours_prefill():
            with torch.inference_mode():  # as the engine runs it (and transformers below)
                prefill(ours, ours.new_cache(1, prompt_len), prompt)

        def hf_prefill():
            with torch.inference_mode():  # the last position's logits, as ours (and generate)
                hf(x, use_cache=True, logits_to_keep=1)

        def ours_decode():
            return generate(ours, short, new_tokens).tokens

        def hf_decode():
            with torch.inference_mode():
                out = hf.generate(torch.tensor([short]), max_new_tokens=new_tokens,
                                  min_new_tokens=new_tokens, do_sample=False)
            return out[0, len(short):].tolist()

        same = ours_decode() == hf_decode()  # also warms both up
        ours_prefill(), hf_prefill()
        times = interleaved_medians([ours_prefill, hf_prefill, ours_decode, hf_decode], repeats)
        for k, impl in enumerate(("tokenfill", "transformers")):
            t_pre, t_dec = times[k], times[2 + k]
            rows.append(f"| {impl} | {name} | {prompt_len / t_pre:,.0f} | "
                        f"{new_tokens / t_dec:,.0f} | {'yes' if same else 'NO'} |")
    rows.extend(llama_server_rows(model_dir, prompt, short, new_tokens, repeats,
                                  generate(load_model(model_dir), short, new_tokens).tokens))
    return "\n".join([
        header(f"python -m benchmarks runtime{model_option(model_dir)}"),
        f"prefill: one {prompt_len}-token prompt; decode: {new_tokens} greedy tokens after a "
        f"32-token prompt; median of {repeats} rounds, the runtimes taking turns; both with "
        f"tokenfill's threads per pass "
        f"({MAX_THREADS} for {SMALL_PASS} tokens or more, 1 below: hardware.py).",
        "",
        "llama-server: the same weights exported as f32 GGUF, the same token ids, its own "
        "timings (median of the rounds), its default threads.",
        "",
        "| runtime | dtype | prefill tokens/s | decode tokens/s | same greedy tokens |",
        "| --- | --- | --- | --- | --- |",
        *rows,
    ])


def llama_server_rows(model_dir: Path, prompt: list[int], short: list[int], new_tokens: int,
                      repeats: int, expected: list[int]) -> list[str]:
    """llama-server's prefill and decode rates on the same ids, by its own timings; a row that
    says why where it cannot run here. `expected`: tokenfill's fp32 greedy tokens."""
    import statistics
    import tempfile

    import httpx

    from tokenfill.serve.launch import EngineProcess, engine_missing

    missing = engine_missing("llama.cpp")
    if missing:
        return [f"| llama-server | f32 | - | - | not run: {missing} |"]
    log = Path(tempfile.mkdtemp(prefix="bench-runtime-")) / "llama.log"
    server = EngineProcess("llama.cpp", model_dir, log, slots=1)
    try:
        def ask(ids: list[int], n: int) -> dict:
            return httpx.post(server.url + "/completion", timeout=120, json={
                "prompt": ids, "n_predict": n, "temperature": 0, "cache_prompt": False,
                "ignore_eos": True, "return_tokens": True}).json()

        ask(prompt, 1)  # warm-up
        prefill = [ask(prompt, 1)["timings"]["prompt_per_second"] for _ in range(repeats)]
        runs = [ask(short, new_tokens) for _ in range(repeats)]
        decode = [r["timings"]["predicted_per_second"] for r in runs]
        same = runs[0].get("tokens") == expected
    finally:
        server.stop()
    return [f"| llama-server | f32 | {statistics.median(prefill):,.0f} | "
            f"{statistics.median(decode):,.0f} | {'yes' if same else 'NO'} |"]
