"""Image -> embedding, and keeping embeddings: the memory cache, the on-disk entry format, the
disk cache, embeddings stores, stacks (one window, lazy planes), tiles for huge images, and
distributed embedding on dask."""
