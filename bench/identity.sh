#!/usr/bin/env bash
# Sign-in costs (pds serve, release build): a password + TOTP sign-in over
# HTTP (Argon2id dominates), enrolment, refresh, and a PostgreSQL-protocol
# connection (TLS, token check, project access, SELECT 1) with a PDS session
# token and with an identity provider's RS256 JWT (the test OpenID Provider of
# crates/pds-cli/tests/oidc). Writes bench/results/<date>-identity.json.
#
#   bench/identity.sh                  # 20 accounts, 50 connections per kind
#   ACCOUNTS=40 CONNECTS=200 bench/identity.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ACCOUNTS="${ACCOUNTS:-20}"
CONNECTS="${CONNECTS:-50}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked -p pds-cli
  BIN="$CARGO_TARGET_DIR/release/pds"
fi
(cd crates/pds-cli/tests/oidc && [ -d node_modules ] || npm ci --no-audit --no-fund --silent)
WORK="${BENCH_WORK:-bench/work}/identity"
rm -rf "$WORK"; mkdir -p "$WORK" bench/results
export PDS_USER=steward
PW="identity bench passphrase 42"
HTTP_PORT=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
node crates/pds-cli/tests/oidc/provider.mjs 0 "https://127.0.0.1:$HTTP_PORT/api/v1/oidc/psc/callback" > "$WORK/idp.json" 2>/dev/null &
IDP=$!
trap 'kill $IDP 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do [ -s "$WORK/idp.json" ] && break; sleep 0.2; done
ISSUER=$(python3 -c "import json;print(json.load(open('$WORK/idp.json'))['issuer'])")
"$BIN" synth -q --beneficiaries 1000 --years 2022 --seed 42 --out "$WORK/delivery"
"$BIN" --home "$WORK/home" init --master-key-file "$WORK/master.key" > /dev/null
"$BIN" --home "$WORK/home" load -q "$WORK/delivery"
cat > "$WORK/perimeter.toml" <<'TOML'
years = [2022, 2022]
[tables]
IR_BEN_R = ["BEN_NIR_PSA", "BEN_SEX_COD", "BEN_NAI_ANN"]
TOML
"$BIN" --home "$WORK/home" project create p-bench --title bench --authorisation bench \
  --expires 2099-12-31 --perimeter "$WORK/perimeter.toml" > /dev/null
"$BIN" --home "$WORK/home" project grant p-bench psc-810001234567 > /dev/null
for i in $(seq 0 $((ACCOUNTS - 1))); do
  PDS_NEW_PASSWORD="$PW" "$BIN" --home "$WORK/home" user add "u$i" > /dev/null
  "$BIN" --home "$WORK/home" project grant p-bench "u$i" > /dev/null
done
"$BIN" --home "$WORK/home" tls self-signed > /dev/null
sed -i 's/login_attempts_per_minute = 30/login_attempts_per_minute = 0/' "$WORK/home/config.toml"
cat >> "$WORK/home/config.toml" <<TOML

[[identity.oidc]]
name = "psc"
profile = "pro-sante-connect"
issuer = "$ISSUER"
client_id = "pds"
client_secret_env = "PDS_BENCH_PSC_SECRET"
redirect_uri = "https://127.0.0.1:$HTTP_PORT/api/v1/oidc/psc/callback"
audiences = ["urn:pds:api"]
TOML
PDS_BENCH_PSC_SECRET=pds-test-secret-not-for-production "$BIN" --home "$WORK/home" serve \
  --pg-listen 127.0.0.1:0 --flight-listen 127.0.0.1:0 --http-listen "127.0.0.1:$HTTP_PORT" \
  --ready-file "$WORK/ready.json" > "$WORK/serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER $IDP 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do [ -f "$WORK/ready.json" ] && break; sleep 0.2; done
PG=$(python3 -c "import json;print(json.load(open('$WORK/ready.json'))['pg'])")
RES=$(python3 bench/identity/measure.py "https://127.0.0.1:$HTTP_PORT" "${PG%:*}" "${PG##*:}" "$ISSUER" "$ACCOUNTS" "$PW" "$CONNECTS")
OUT="bench/results/$(date +%F)-identity.json"
python3 - "$OUT" "$RES" "$BIN" <<'PY'
import json, sys
out, res, binary = sys.argv[1:4]
r = json.loads(res)
r["machine"] = "2 cores, 24 GiB; server, identity provider and client on the same host"
r["binary"] = binary
r["argon2id"] = "m=19 MiB, t=2, p=1"
json.dump(r, open(out, "w"), indent=2)
print(json.dumps(r, indent=2))
PY
echo "written: $OUT"
