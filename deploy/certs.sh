#!/usr/bin/env bash
# A local CA and certificates for Formica's processes (docs/security.md),
# made with openssl alone: the recipe to follow, or to replace with your own
# PKI (cert-manager, Vault) that issues the same shape of certificate.
#
#   deploy/certs.sh [--dir D] [--days N] [--host H,...] [--trust-domain TD] NAME...
#   deploy/certs.sh [--dir D] [--days N] --revoke [NAME...]
#
# Makes D/ca.pem and D/ca.key once (a P-256 CA, 10 years), then for each
# NAME a P-256 key D/NAME.key and a certificate D/NAME.pem signed by that CA,
# valid N days (default 365; a negative N makes one already expired), with
# the subject CN=NAME and the subject alternative names
#   URI:spiffe://TD/NAME   (the identity Formica reads; TD defaults to formica.local)
#   DNS:localhost, IP:127.0.0.1, and each --host (an IP or a DNS name)
# and extendedKeyUsage serverAuth, clientAuth (every Formica process is both).
# D defaults to .formica-data/certs. An existing NAME's files are replaced.
# With --revoke, each NAME's current certificate is revoked instead, and
# D/crl.pem, the CA's revocation list (tls.crl_file), is written again with
# every certificate revoked so far, valid N days (default 30); with no NAME
# the list is only renewed (or made, empty). Renew it before it expires:
# a process checking it refuses every peer once it has.
set -euo pipefail

dir=".formica-data/certs"
days=""
revoke=""
hosts=""
domain="formica.local"
names=()
usage() {
  sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir="${2:?--dir needs a value}"; shift 2 ;;
    --days) days="${2:?--days needs a value}"; shift 2 ;;
    --host) hosts="${2:?--host needs a value}"; shift 2 ;;
    --trust-domain) domain="${2:?--trust-domain needs a value}"; shift 2 ;;
    --revoke) revoke=1; shift ;;
    -h|--help) usage ;;
    -*) echo "certs: unknown flag $1" >&2; usage ;;
    *) names+=("$1"); shift ;;
  esac
done
[ ${#names[@]} -gt 0 ] || [ -n "$revoke" ] || { echo "certs: name at least one identity" >&2; usage; }
[ -n "$days" ] || days=$([ -n "$revoke" ] && echo 30 || echo 365)
[[ "$days" =~ ^-?[0-9]+$ ]] || { echo "certs: --days must be a whole number, got '$days'" >&2; exit 2; }
[[ "$domain" =~ ^[A-Za-z0-9.-]+$ ]] || { echo "certs: --trust-domain '$domain' must be letters, digits, '.' and '-'" >&2; exit 2; }
for n in "${names[@]+"${names[@]}"}"; do
  # A name becomes a file name and a URI path: nothing that could leave D.
  if ! [[ "$n" =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$ ]] || [ "$n" = "ca" ]; then
    echo "certs: name '$n' must be 1 to 63 of A-Z a-z 0-9 . _ - (starting with a letter or digit), and not 'ca'" >&2
    exit 2
  fi
done
san="DNS:localhost,IP:127.0.0.1"
IFS=',' read -r -a extra <<<"$hosts"
for h in "${extra[@]}"; do
  [ -z "$h" ] && continue
  if [[ "$h" =~ ^[0-9.]+$ || "$h" == *:* ]]; then san="$san,IP:$h"; else san="$san,DNS:$h"; fi
done

mkdir -p "$dir"
chmod 700 "$dir"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [ ! -f "$dir/ca.pem" ] || [ ! -f "$dir/ca.key" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=Formica local CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>"$work/err" ||
    { cat "$work/err" >&2; exit 1; }
  chmod 600 "$dir/ca.key"
  echo "certs: made the CA $dir/ca.pem"
fi
if [ -n "$revoke" ]; then
  [ -f "$dir/ca.pem" ] && [ -f "$dir/ca.key" ] || { echo "certs: no CA in $dir to revoke with" >&2; exit 1; }
  # The CA's record of what it revoked (openssl ca's index format).
  index="$dir/crl-index.txt"
  touch "$index"
  for n in "${names[@]+"${names[@]}"}"; do
    [ -f "$dir/$n.pem" ] || { echo "certs: no certificate $dir/$n.pem to revoke" >&2; exit 1; }
    serial="$(openssl x509 -in "$dir/$n.pem" -noout -serial | cut -d= -f2)"
    if grep -q "	$serial	" "$index"; then
      echo "certs: $n's certificate (serial $serial) is already revoked"
      continue
    fi
    end="$(date -u -d "$(openssl x509 -in "$dir/$n.pem" -noout -enddate | cut -d= -f2)" +%y%m%d%H%M%SZ)"
    printf 'R\t%s\t%s\t%s\tunknown\t/CN=%s\n' "$end" "$(date -u +%y%m%d%H%M%SZ)" "$serial" "$n" >>"$index"
    echo "certs: revoked $n's certificate (serial $serial)"
  done
  printf '[ca]\ndefault_ca = local\n[local]\ndatabase = %s\nunique_subject = no\ndefault_md = sha256\ndefault_crl_days = %s\n' \
    "$index" "$days" >"$work/ca.cnf"
  openssl ca -gencrl -config "$work/ca.cnf" -keyfile "$dir/ca.key" -cert "$dir/ca.pem" \
    -out "$work/crl.pem" 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  mv -f "$work/crl.pem" "$dir/crl.pem"
  echo "certs: wrote $dir/crl.pem ($(grep -c '^R' "$index") revoked, valid $days days)"
  exit 0
fi
for n in "${names[@]}"; do
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=URI:spiffe://%s/%s,%s\n' \
    "$domain" "$n" "$san" >"$work/ext"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$n" \
    -keyout "$work/$n.key" -out "$work/$n.csr" 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  openssl x509 -req -in "$work/$n.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days "$days" -extfile "$work/ext" \
    -out "$work/$n.pem" 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  chmod 600 "$work/$n.key"
  # Replaced by rename, so a process watching the files never reads half of one.
  mv -f "$work/$n.key" "$dir/$n.key"
  mv -f "$work/$n.pem" "$dir/$n.pem"
  echo "certs: made $dir/$n.pem ($n, spiffe://$domain/$n, $days days)"
done
