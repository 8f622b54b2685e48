"""The runtime: the network, its checkpoints and tokenizer, KV slots, decoding. It speaks token ids."""

from tokenfill.runtime.hardware import bound_kernel_caches

bound_kernel_caches()
