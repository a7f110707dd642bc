"""Start llama-cpp-python's OpenAI-compatible server with cuecard's llama.cpp load settings.

Used by ``test_remote_server.py``: ``python serve_llama.py --model X --host 127.0.0.1 --port N``.
The server loads its model inside cuecard's repacking guard (see ``cuecard.clients.local``), which keeps
batched prompt decoding from crashing on AVX-512/AMX CPUs.
"""

import runpy
import sys

from cuecard.clients.local import _without_weight_repacking

if __name__ == "__main__":
    with _without_weight_repacking():
        sys.argv[0] = "llama_cpp.server"
        runpy.run_module("llama_cpp.server", run_name="__main__")
