"""GenImage data: layout discovery, robust image reading, datasets and the synthetic stand-in."""
