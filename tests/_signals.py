"""Child processes that receive Ctrl-C as they would at a terminal.

A shell that starts a job in the background (`cmd &` without job control) sets SIGINT to "ignore" for it, and
every child inherits that: Python then installs no KeyboardInterrupt handler, and a test that sends SIGINT to its
child would see the child run to the end. Passing `preexec_fn=default_sigint` to subprocess.Popen restores the
default before the child starts, so these tests measure the command, not how the test run was launched.
"""
import signal


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
