"""The model layer: LMs (litellm or the embedded llama.cpp model), the plain adapter, the usage meter
and caps, the run's record of replies, fetchable GGUF models, and a scripted LM for tests.

It stands on cuecard's top-level modules (errors, identity, ...) and imports nothing from the engine,
the reporting or the command line.
"""
