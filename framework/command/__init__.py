"""The ``cuecard`` command (``cli``) and the command-line inputs a teleprompter declares (``cli_inputs``)."""
