"""numpy-level values and rules that every layer shares: embeddings and predictions, prompts,
image windows, geometry, cancel tokens, devices. Imports nothing else of the package."""
