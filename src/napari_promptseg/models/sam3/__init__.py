"""SAM 3 backend: concept prompts (a noun phrase and/or exemplar boxes) on images, on Meta's ``sam3``."""
