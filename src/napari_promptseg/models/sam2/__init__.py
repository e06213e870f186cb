"""The SAM 2.1 family (Hiera T/S/B+/L): Meta's network, our fast decoder."""
