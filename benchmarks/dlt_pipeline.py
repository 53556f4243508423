"""dlt's merge pipeline over the same connections (run by bench_dlt.py inside .venv-dlt, never the project's venv).

    python dlt_pipeline.py BASE_URL IDS_FILE POSTGRES_URL

Fetches every id in turn with dlt's own requests helper, as a dlt user would,
and merges the documents into PostgreSQL on the connection id (permissions go
to dlt's child table). Prints the seconds that ``pipeline.run`` took.
"""

import sys
import time

import dlt
from dlt.sources.helpers import requests


def main() -> None:
    base_url, ids_file, postgres_url = sys.argv[1:4]
    ids = open(ids_file).read().split()

    @dlt.resource(name="connections", write_disposition="merge", primary_key="id")
    def connections():  # type: ignore[no-untyped-def]
        session = requests.Session()
        for connection_id in ids:
            doc = session.get(f"{base_url}/connections/{connection_id}",
                              headers={"Authorization": "Bearer bench"}).json()["data"]
            yield {
                "id": doc["id"],
                "user_id": doc["relationships"]["user"]["data"]["id"],
                "vehicle_id": doc["relationships"]["vehicle"]["data"]["id"],
                "permissions": doc["attributes"]["permissions"],
                **doc["attributes"]["vehicle"],
                "created_at": doc["meta"]["createdAt"],
                "updated_at": doc["meta"]["updatedAt"],
            }

    pipeline = dlt.pipeline(pipeline_name="bench_connections", destination=dlt.destinations.postgres(postgres_url),
                            dataset_name="smartcar", pipelines_dir=sys.argv[4] if len(sys.argv) > 4 else None)
    started = time.perf_counter()
    pipeline.run(connections())
    print(f"{time.perf_counter() - started:.3f}")


if __name__ == "__main__":
    main()
