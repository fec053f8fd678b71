"""Sign-in costs of pds serve, measured from a client on the same host.

Usage: measure.py HTTP_BASE PG_HOST PG_PORT ISSUER ACCOUNTS PASSWORD CONNECTS
Prints one JSON object: milliseconds (p50, p90, max) per operation.
"""
import base64, hashlib, hmac, json, statistics, struct, sys, time, warnings

import psycopg, requests

warnings.filterwarnings("ignore")
base, pg_host, pg_port, issuer, accounts, password, connects = sys.argv[1:8]
accounts, connects = int(accounts), int(connects)
S = requests.Session()
S.verify = False
S.trust_env = False  # REQUESTS_CA_BUNDLE would otherwise override verify=False


def totp(secret, t):
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    h = hmac.new(key, struct.pack(">Q", t // 30), hashlib.sha256).digest()
    o = h[-1] & 0x0F
    return "%06d" % ((struct.unpack(">I", h[o:o + 4])[0] & 0x7FFFFFFF) % 1_000_000)


def stats(xs):
    xs = sorted(xs)
    return {"n": len(xs), "p50_ms": round(statistics.median(xs), 2),
            "p90_ms": round(xs[int(0.9 * (len(xs) - 1))], 2), "max_ms": round(xs[-1], 2)}


def timed(f):
    t = time.perf_counter()
    r = f()
    return r, (time.perf_counter() - t) * 1000


first, enrol, confirm, login, refresh = [], [], [], [], []
sessions, secrets = {}, {}
for i in range(accounts):
    user = f"u{i}"
    r, ms = timed(lambda: S.post(f"{base}/api/v1/login", json={"user": user, "password": password}))
    assert r.status_code == 200, r.text
    first.append(ms)
    et = r.json()["enrolment_token"]
    h = {"authorization": f"Bearer {et}"}
    r, ms = timed(lambda: S.post(f"{base}/api/v1/mfa/enrol", headers=h))
    enrol.append(ms)
    secrets[user] = r.json()["secret"]
    code = totp(secrets[user], int(time.time()))
    r, ms = timed(lambda: S.post(f"{base}/api/v1/mfa/confirm", headers=h, json={"code": code}))
    assert r.status_code == 200, r.text
    confirm.append(ms)
for i in range(accounts):
    user = f"u{i}"
    # The next time step: the enrolment spent the current one.
    code = totp(secrets[user], int(time.time()) + 30)
    r, ms = timed(lambda: S.post(f"{base}/api/v1/login",
                                 json={"user": user, "password": password, "totp": code}))
    assert r.status_code == 200, r.text
    login.append(ms)
    sessions[user] = r.json()["session"]
for user, s in sessions.items():
    r, ms = timed(lambda: S.post(f"{base}/api/v1/token/refresh", json={"refresh_token": s["refresh_token"]}))
    assert r.status_code == 200, r.text
    refresh.append(ms)
    sessions[user] = r.json()


def connect_ms(user, token):
    out = []
    for _ in range(connects):
        t = time.perf_counter()
        with psycopg.connect(host=pg_host, port=int(pg_port), dbname="p-bench", user=user,
                             password=token, sslmode="require") as c:
            c.execute("SELECT 1").fetchone()
        out.append((time.perf_counter() - t) * 1000)
    return out


pds_token = sessions["u0"]["access_token"]
jwt = S.post(f"{issuer}/test/mint", json={}).json()["token"]
result = {
    "http_first_login_password_only_ms": stats(first),
    "http_totp_enrol_ms": stats(enrol),
    "http_totp_confirm_ms": stats(confirm),
    "http_login_password_and_totp_ms": stats(login),
    "http_refresh_ms": stats(refresh),
    "pgwire_connect_select1_pds_token_ms": stats(connect_ms("u0", pds_token)),
    "pgwire_connect_select1_oidc_jwt_ms": stats(connect_ms("psc-810001234567", jwt)),
}
print(json.dumps(result))
