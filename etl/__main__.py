"""`python -m etl` is the same program as `smartcar-etl`."""

from etl.cli import main

if __name__ == "__main__":
    main()
