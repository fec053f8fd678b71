"""Drives `pds serve` with psycopg 3; prints one JSON object of observations.

Usage: psycopg_client.py HOST PORT PROJECT USER PASSWORD
The Rust test compares every value with `pds sql` run on the same project.
"""
import json
import sys
import threading
import time

import psycopg

host, port, project, user, password = sys.argv[1:6]
out = {}


def connect(**kw):
    args = dict(host=host, port=int(port), dbname=project, user=user, password=password, sslmode="require")
    args.update(kw)
    return psycopg.connect(**args)


def error_of(fn):
    try:
        fn()
    except psycopg.Error as e:
        return {"sqlstate": e.sqlstate, "message": str(e).strip()}
    return None


with connect(autocommit=True) as conn:
    # Plain (simple protocol) query.
    cur = conn.cursor()
    cur.execute('SELECT COUNT(*) AS n, COUNT(DISTINCT "BEN_NIR_PSA") AS people FROM "ER_PRS_F"', prepare=False)
    out["plain"] = list(cur.fetchone())
    # Parameters (extended protocol, $1 placeholders), executed twice as a prepared statement.
    common = conn.execute('SELECT "PRS_NAT_REF" FROM "ER_PRS_F" GROUP BY 1 ORDER BY COUNT(*) DESC, 1 LIMIT 1').fetchone()[0]
    q = 'SELECT COUNT(*) FROM "ER_PRS_F" WHERE "PRS_NAT_REF" = %s'
    out["param_value"] = common
    out["param"] = [conn.execute(q, (common,), prepare=True).fetchone()[0] for _ in range(2)]
    out["param_text"] = conn.execute(
        'SELECT COUNT(*) FROM "IR_BEN_R" WHERE "BEN_SEX_COD" = %s AND "BEN_NIR_PSA" <> %s', (1, "none")
    ).fetchone()[0]
    # Column types as the driver sees them.
    cur = conn.execute('SELECT "BEN_NIR_PSA", "EXE_SOI_DTD", "PRS_ACT_QTE" FROM "ER_PRS_F" LIMIT 1')
    out["types"] = [type(v).__name__ for v in cur.fetchone()]
    # Settings: allowed and refused.
    conn.execute("SET statement_timeout = 120000")
    out["show_timeout"] = conn.execute("SHOW statement_timeout").fetchone()[0]
    out["set_refused"] = error_of(lambda: conn.execute("SET work_mem = '1GB'"))
    # Errors.
    out["hidden_table"] = error_of(lambda: conn.execute('SELECT * FROM "KI_CCI_R"'))
    out["write"] = error_of(lambda: conn.execute('CREATE TABLE x (a int)'))

# A server-side cursor over a large result, in a transaction (psycopg's DECLARE/FETCH).
with connect() as conn:
    with conn.cursor(name="big") as cur:
        cur.itersize = 500
        cur.execute('SELECT "BEN_NIR_PSA", "EXE_SOI_DTD" FROM "ER_PRS_F"')
        n = 0
        people = set()
        for row in cur:
            n += 1
            people.add(row[0])
        out["cursor_rows"] = n
        out["cursor_people"] = len(people)

# Cancel: a slow statement cancelled from another thread.
with connect(autocommit=True) as conn:
    slow = 'SELECT COUNT(*) FROM "ER_PRS_F" a CROSS JOIN "ER_PRS_F" b CROSS JOIN "ER_PRS_F" c'
    t = threading.Timer(1.5, conn.cancel)
    t.start()
    start = time.time()
    out["cancel"] = error_of(lambda: conn.execute(slow).fetchone())
    out["cancel_seconds"] = round(time.time() - start, 1)
    t.cancel()
    # The connection is usable afterwards.
    out["after_cancel"] = conn.execute("SELECT 1").fetchone()[0]
    conn.execute("SET statement_timeout = '1s'")
    start = time.time()
    out["timeout"] = error_of(lambda: conn.execute(slow).fetchone())
    out["timeout_seconds"] = round(time.time() - start, 1)

# Sign-in failures.
out["wrong_password"] = error_of(lambda: connect(password="not the password").close())
out["plaintext"] = error_of(lambda: connect(sslmode="disable").close())

print(json.dumps(out))
