"""Models: their shapes, the memory they need, downloads and the smoke chat."""
