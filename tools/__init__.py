"""Command-line scripts: `python -m tools.train`, `tools.fuse`, `tools.export`, `tools.evaluate`."""
