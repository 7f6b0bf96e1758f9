"""`python -m tunery` runs the command-line interface."""

from tunery.cli.main import main

if __name__ == "__main__":  # not when multiprocessing's spawn re-imports this module in the engine process
    main()
