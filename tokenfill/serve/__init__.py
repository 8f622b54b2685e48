"""Serving: the model worker, the HTTP app and its protocol adapters, the language server."""
