"""Bundled recipes (installed as the package ``bnnkit_recipes``; see ``bnnkit recipes list``)."""
