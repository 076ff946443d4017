"""`python -m workers ...`: the same command as `vaegen generate`, without the other stages."""

from workers.cli import app

if __name__ == "__main__":
    app()
