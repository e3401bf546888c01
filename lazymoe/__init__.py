"""lazymoe: a course kit for running LLMs on the hardware you have.

The package grows lab by lab: hardware probe, speed calculator, quantizer, expert store,
tiered expert cache, prefetcher, engine, benchmark harness and an OpenAI-style server.
"""

__version__ = "0.1.0"
