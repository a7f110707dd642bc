"""What a compile leaves behind: the compile report (PNG, HTML from ``templates/``) and saved programs.

It reads the engine's results and imports nothing from the command line.
"""
