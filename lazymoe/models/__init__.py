"""The bundled tiny model: corpus, recipe, GGUF export; random checkpoints for tests.

    corpus.py       the training text: the running Python's standard library source
    tokenizer.py    byte-level BPE with GPT-2's split regex (llama.cpp: tokenizer.ggml.pre = "gpt-2")
    recipe.py       model shape + seeded CPU training (train_log.json)
    prepare.py      `python -m lazymoe.models.prepare`: ensure data/models/tiny-moe exists
    bundled.py      load the model / tokenizer / held-out ids
    evaluate.py     perplexity, routing statistics, greedy samples
    card.py         metrics.json + MODEL_CARD.md
    params.py       total vs active parameter counts
    speed.py        prefill / decode timing, dense random models, roofline fit
    archs.py        the architecture registry: one record per MoE model type (engine, GGUF, random)
    gguf_write.py   the one GGUF writer (metadata, vocabulary, tensors streamed one at a time)
    gguf_export.py  export_gguf(model_dir, out_path, out_type) for llama.cpp
    random.py       tiny random checkpoints of several MoE architectures (tests, benchmarks)
"""
