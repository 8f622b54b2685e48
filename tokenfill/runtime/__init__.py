"""The runtime: the network, its checkpoints and tokenizer, KV slots, decoding. It speaks token ids."""
