"""Completion at the cursor: the request, the engine, FIM prompts, cursor modes, stops, syntax."""
