"""The bundled tiny model: corpus, recipe, GGUF export; random checkpoints for tests."""
