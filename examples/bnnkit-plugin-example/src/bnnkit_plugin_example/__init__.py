"""Example bnnkit plugins: ``eca`` attention and the ``swag`` inference method.

Each plugin lives in its own module, named by an entry point in the ``bnnkit`` group (see
``pyproject.toml``), so either can be disabled on its own with ``BNNKIT_DISABLE_PLUGINS``.
"""

__version__ = "0.1.0"
