#!/usr/bin/env bash
# Installs the anchors (ejabberd, Prosody, Tsung from Debian), prepares one shared
# certificate, the data directories, and provisions the bench accounts on kith,
# ejabberd and Prosody: user1..userN@localhost with the password $BENCH_PASSWORD.
#
#   bench/setup-anchors.sh [USERS]        (default 20000)
#
# Needs root (apt-get, chown to the ejabberd/prosody users), a release build of kith
# and kith-bench:  cargo build --release -p kith -p kith-bench
# Environment: see bench/lib.sh (BENCH_DIR, KITH_BIN, BENCH_BIN, SERVERS…).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

USERS="${1:-20000}"
SERVERS="${SERVERS:-kith ejabberd prosody}"
[[ "$BENCH_DIR" != *" "* ]] || { log "BENCH_DIR must not contain spaces"; exit 1; }

if [[ "${SKIP_APT:-0}" != 1 ]]; then
  missing=()
  command -v ejabberdctl >/dev/null || missing+=(ejabberd)
  command -v prosody >/dev/null || missing+=(prosody)
  command -v tsung >/dev/null || missing+=(tsung)
  # Prosody's SQL storage on SQLite (PROSODY_ARCHIVE=sql, bench/lib.sh).
  dpkg -s lua-dbi-sqlite3 >/dev/null 2>&1 || missing+=(lua-dbi-sqlite3)
  if ((${#missing[@]})); then
    log "installing ${missing[*]} from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y "${missing[@]}"
  fi
  # Debian may start the packaged services on install: the bench runs its own
  # instances on other ports, so stop the packaged ones (only if they run).
  if command -v service >/dev/null; then
    service ejabberd stop >/dev/null 2>&1 || true
    service prosody stop >/dev/null 2>&1 || true
  fi
fi
for bin in "$KITH_BIN" "$BENCH_BIN"; do
  [[ -x "$bin" ]] || { log "missing $bin: cargo build --release -p kith -p kith-bench"; exit 1; }
done

mkdir -p "$BENCH_DIR"/{tls,kith/data,ejabberd/spool,ejabberd/logs,prosody/data,results}
# One certificate for all three: an ECDSA P-256 leaf for "localhost" signed by a
# local CA, valid 2 years. (Not kith's generated one: its far-future expiry date
# crashes ejabberd 23.01's certificate expiry timer.)
if [[ ! -s "$BENCH_DIR/tls/cert.pem" ]]; then
  log "generating the shared certificate"
  t="$BENCH_DIR/tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 730 \
    -subj "/CN=kith-bench local CA" -keyout "$t/ca.key" -out "$t/ca.pem" 2>/dev/null
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=localhost" -keyout "$t/key.pem" -out "$t/cert.csr" 2>/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$t/leaf.ext"
  openssl x509 -req -in "$t/cert.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial \
    -days 730 -extfile "$t/leaf.ext" -out "$t/cert.pem" 2>/dev/null
  rm -f "$t/cert.csr" "$t/leaf.ext" "$t/ca.srl"
fi
cat "$BENCH_DIR/tls/cert.pem" "$BENCH_DIR/tls/key.pem" >"$BENCH_DIR/ejabberd/cert+key.pem"
chmod 0644 "$BENCH_DIR/tls/"*.pem
chown -R ejabberd:ejabberd "$BENCH_DIR/ejabberd"
chown -R prosody:prosody "$BENCH_DIR/prosody"
chmod 0755 "$BENCH_DIR" "$BENCH_DIR/tls"
chmod 0644 "$BENCH_DIR/tls/key.pem"

# Provisioning: XEP-0077 in-band registration through kith-bench, the same path on
# all three servers, 16 in flight (no ejabberdctl/prosodyctl process per account).
for server in $SERVERS; do
  log "provisioning $USERS accounts on $server"
  pids="$(start_server "$server")"
  # shellcheck disable=SC2086
  if ! bench "$server" $pids -- register --users "$USERS" --concurrency 16 \
      --json "$BENCH_DIR/results/register-$server.json"; then
    log "provisioning $server failed"
  fi
  stop_server "$server"
  if [[ "$server" == kith ]]; then
    # The provisioned database, copied afresh for every run (bench/lib.sh).
    rm -rf "$BENCH_DIR/kith/data.provisioned"
    cp -a "$BENCH_DIR/kith/data" "$BENCH_DIR/kith/data.provisioned"
  fi
done
log "done: accounts user1..user$USERS@localhost, password $BENCH_PASSWORD, data in $BENCH_DIR"
