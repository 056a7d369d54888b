"""trialfed tests."""
