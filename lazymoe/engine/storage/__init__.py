"""Where expert bytes live: the checkpoint on disk, and the pools of slots in RAM and VRAM.

    safetensors_file.py   reading a safetensors header and memory map without a library call per tensor
    pagelock.py           page-locking a mapped checkpoint for CUDA (--pin-checkpoint), and unlocking it
    weights.py            ExpertWeights (one expert's gate/up/down) and what every store has in common
    store.py              ExpertStore: one expert's bytes, read without loading the file (lab05b)
    extracted.py          ExtractedStore: reads the per-layer expert files extract() writes
    extract.py            one-time extraction of a checkpoint's experts into a contiguous layout
    pool.py               ExpertPool: the one owner of expert buffers, allocated once, in equal slots
    gguf_file.py          GGUFExpertStore: a GGUF file's experts as quantized views into its map
    gguf_config.py        a GGUF file's metadata as config.json, its other tensors as floats
    qpool.py              QuantizedPool: slots of stored (quantized) bytes, for GGUF models (RAM or VRAM)
    tiers.py              the tiers VRAM -> pinned RAM -> disk, each a pool plus a CacheBook
"""
