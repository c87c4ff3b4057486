"""`python -m kerassave_callbacks`: the `kerassave` command."""

from kerassave_callbacks.cli import run

if __name__ == "__main__":
    run()
