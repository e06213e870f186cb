"""The SAM family (ViT-B/L/H and the shipped demo model): Meta's network, our fast decoder."""
