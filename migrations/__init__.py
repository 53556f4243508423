"""Alembic migrations of smartcar-etl, shipped inside the package as ``etl.migrations``.

They live at the top of the repository (``alembic.ini`` points here) and are
mapped into the wheel by ``package-dir`` in pyproject.toml, so that an installed
``smartcar-etl db upgrade`` finds them through ``importlib.resources``.
"""
