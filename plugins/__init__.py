"""bnnkit's built-in plugins (import name ``bnnkit_plugins``), one module per plugin, each
registered in pyproject.toml under ``[project.entry-points.bnnkit]`` like any third-party plugin."""
