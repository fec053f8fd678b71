"""Drives `pds serve`'s Flight SQL endpoint with ADBC; prints JSON observations.

Usage: adbc_client.py URI PROJECT USER PASSWORD SQL [SQL...]
"""
import json
import sys

import adbc_driver_flightsql.dbapi as flight_sql
import adbc_driver_manager

uri, project, user, password = sys.argv[1:5]
statements = sys.argv[5:]


def connect(pw=password, proj=project):
    return flight_sql.connect(
        uri,
        db_kwargs={
            "username": user,
            "password": pw,
            "adbc.flight.sql.client_option.tls_skip_verify": "true",
            "adbc.flight.sql.rpc.call_header.x-pds-project": proj,
        },
    )


out = {"results": [], "errors": []}
with connect() as conn:
    for sql in statements:
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                table = cur.fetch_arrow_table()
                out["results"].append({
                    "columns": table.column_names,
                    "rows": [[None if v is None else str(v) for v in row.values()] for row in table.to_pylist()],
                    "num_rows": table.num_rows,
                })
        except adbc_driver_manager.Error as e:
            out["results"].append({"error": str(e)})
    objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
    out["tables"] = sorted(
        t["table_name"]
        for c in objects
        for s in (c["catalog_db_schemas"] or [])
        for t in (s["db_schema_tables"] or [])
    )
try:
    with connect(pw="not the password") as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    out["wrong_password"] = None
except adbc_driver_manager.Error as e:
    out["wrong_password"] = str(e)
print(json.dumps(out))
