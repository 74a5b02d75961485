"""The detector: backbone -> attention -> global pool -> (Bayesian) head."""
