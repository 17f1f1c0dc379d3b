#!/usr/bin/env bash
# Creates the webhook's certificate set with openssl:
#   ca.pem / ca-key.pem          the CA both sides trust
#   server.pem / server-key.pem  the registrar's serving certificate for <service>.<namespace>.svc
#   client.pem / client-key.pem  the API server's client certificate (clientAuth)
#   kubeconfig.yaml              for the API server's WebhookAdmissionConfiguration
# Usage: make-certs.sh [namespace] [service] [out-dir]
set -euo pipefail
ns="${1:-spire}"; svc="${2:-k8s-workload-registrar}"; out="${3:-./webhook-certs}"
mkdir -p "$out"; cd "$out"
days=365
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
  -subj "/CN=K8S WORKLOAD REGISTRAR CA" -keyout ca-key.pem -out ca.pem
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=K8S WORKLOAD REGISTRAR SERVER" \
  -keyout server-key.pem -out server.csr
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days "$days" -out server.pem \
  -extfile <(printf "subjectAltName=DNS:%s.%s.svc\nextendedKeyUsage=serverAuth\n" "$svc" "$ns")
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=K8S WORKLOAD REGISTRAR CLIENT" \
  -keyout client-key.pem -out client.csr
openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days "$days" -out client.pem \
  -extfile <(printf "extendedKeyUsage=clientAuth\n")
cat > kubeconfig.yaml <<KUBECONFIG
apiVersion: v1
kind: Config
users:
  - name: ${svc}.${ns}.svc
    user:
      client-certificate-data: $(base64 -w0 client.pem)
      client-key-data: $(base64 -w0 client-key.pem)
KUBECONFIG
rm -f ./*.csr ./*.srl
echo "certificates written to $out"
