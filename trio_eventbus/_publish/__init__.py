"""Publishing: the bounded in-flight window, the flush frontier and publish results (the hot kernel)."""
