"""Running the real ``cuecard`` command in the test's process: its exit code and what it printed."""

from cuecard.command.cli import main


def run_main(argv, capsys):
    """``(exit code, stdout, stderr)`` of ``cuecard ARGV``; a usage error's ``SystemExit`` gives its code."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err
