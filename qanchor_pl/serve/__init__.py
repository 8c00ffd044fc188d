"""Serving: multi-scenario embedding with the prefix KV cache, and exports with their model card."""
