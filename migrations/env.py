"""Alembic environment: the schema comes from etl.db.models, the URL from the app's config.

`smartcar-etl db upgrade` passes its own connection in ``config.attributes``;
running the ``alembic`` CLI from a checkout uses the same configuration loading
as the job (``--config`` is not available there: use SMARTCAR_ETL_CONFIG or the
environment variables).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from etl.db.dialects import dialect_for
from etl.db.models import Base, compared_objects

target_metadata = Base.metadata


def run_with(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=dialect_for(connection).alters_by_copy,
        include_object=compared_objects(connection.dialect),
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_with(connection)
        return
    from etl.config import load_config
    from etl.db.engine import null_pool_engine

    url = context.config.get_main_option("sqlalchemy.url") or load_config().database_url
    with null_pool_engine(url).connect() as conn:
        run_with(conn)


if context.is_offline_mode():
    msg = "offline (--sql) migrations are not supported; run against a database"
    raise SystemExit(msg)
run_migrations_online()
