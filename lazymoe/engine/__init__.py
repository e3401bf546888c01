"""The expert-caching MoE engine: store, tiered cache, placement, prefetch, generate."""
