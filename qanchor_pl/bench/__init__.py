"""Benchmarks (`qanchor bench ...`): each returns one JSON-able dict."""
