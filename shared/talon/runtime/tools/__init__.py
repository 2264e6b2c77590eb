"""Tool sources: where a turn's tools come from and how they are called."""
