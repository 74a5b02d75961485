"""The inference-method interface. Built-in methods live in ``plugins/method_*.py``."""
