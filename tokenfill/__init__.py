"""tokenfill: code completion at the cursor from a local language model.

The layers, each a folder: `runtime` (the network, checkpoints, tokenizer, decoding on token
ids), `speculative` (draft trees), `completion` (the request, the engine, cursor modes, stops,
syntax), `serve` (the worker, the HTTP protocols, the language server), `train` and `eval`.
"""

__version__ = "0.1.0"
