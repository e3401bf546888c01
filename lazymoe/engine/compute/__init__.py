"""How the chosen experts are computed once found: the performance layer.

    moe.py              the MoE block run out of the tiered cache: which experts, where each runs
    expert_compute.py   adding weight * expert(x) per place (device slots, CPU), and the reference
    kernels.py          reference / batched / grouped expert kernels over the slot pool
    triton_kernels.py   Triton decode kernels reading experts in place (GPU)
    triton_quant.py     the same for quantized experts (GGUF blocks), one (token, expert) pair each
    triton_grouped.py   a prompt's quantized experts: each decoded once for all its tokens
    graphs.py           the segmented decoder: a decode token as a few CUDA graphs (GPU)
    device_cache.py     the cache kept by the GPU itself: a decode token as one CUDA graph
    cpu_misses.py       inside that graph, some misses computed by the CPU while others are fetched
    placement.py        where a missed expert is computed: fetched to the GPU, or on the CPU
    split.py            layers split across devices (--gpus 0,1): placing them, tensors following
"""
