{{/* Names, labels, checks and the registrar's HCL config, shared by every template. */}}

{{- define "kwr.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kwr.replicas" -}}
{{- if kindIs "invalid" .Values.replicas -}}{{ if eq .Values.topology "sidecar" }}1{{ else }}2{{ end }}
{{- else -}}{{ int .Values.replicas }}{{- end -}}
{{- end -}}

{{- define "kwr.sidecar" -}}{{- if eq .Values.topology "sidecar" -}}true{{- end -}}{{- end -}}

{{/* The spire-server StatefulSet of the sidecar topology and its Services. */}}
{{- define "kwr.serverName" -}}{{- printf "%s-spire-server" (include "kwr.fullname" .) | trunc 63 | trimSuffix "-" -}}{{- end -}}

{{- define "kwr.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selects the pods that run the registrar (spire-server pods in the sidecar topology). */}}
{{- define "kwr.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kwr.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The lock object the registrar takes (src/app/mod.rs names it per mode). */}}
{{- define "kwr.lockName" -}}
{{- if eq .Values.mode "reconcile" -}}{{ printf "%s-leader-election" .Values.reconcile.controllerName }}
{{- else -}}{{ printf "k8s-workload-registrar-%s-leader-election" .Values.mode }}
{{- end -}}
{{- end -}}

{{- define "kwr.lockResource" -}}
{{- if and (ne .Values.mode "webhook") (eq .Values.leaderElection.resourceLock "configmaps") -}}configmaps{{- else -}}leases{{- end -}}
{{- end -}}

{{- define "kwr.elects" -}}
{{- if or (eq .Values.mode "webhook") .Values.leaderElection.enabled -}}true{{- end -}}
{{- end -}}

{{/* Fails the render on values that cannot work, naming the key. */}}
{{- define "kwr.validate" -}}
{{- if not (has .Values.topology (list "standalone" "sidecar")) -}}
{{- fail (printf "topology: %q is neither \"standalone\" nor \"sidecar\"" .Values.topology) -}}
{{- end -}}
{{- if not (has .Values.mode (list "webhook" "reconcile" "crd")) -}}
{{- fail (printf "mode: %q is not one of webhook, reconcile, crd" .Values.mode) -}}
{{- end -}}
{{- if and (eq .Values.mode "crd") .Values.dryRun -}}
{{- fail "dryRun: not supported in crd mode (use `k8s-workload-registrar plan` there)" -}}
{{- end -}}
{{- if and (eq .Values.mode "crd") (or .Values.entries.x509SvidTtl .Values.entries.jwtSvidTtl .Values.entries.hint) -}}
{{- fail "entries: TTLs and hint are not supported in crd mode (entries follow their SpiffeID)" -}}
{{- end -}}
{{- if not (has .Values.leaderElection.resourceLock (list "leases" "configmaps")) -}}
{{- fail (printf "leaderElection.resourceLock: %q is neither \"leases\" nor \"configmaps\"" .Values.leaderElection.resourceLock) -}}
{{- end -}}
{{- if and (gt (include "kwr.replicas" . | int) 1) (ne .Values.mode "webhook") (not .Values.leaderElection.enabled) -}}
{{- fail "leaderElection.enabled: replicas > 1 need leader election, or every replica writes" -}}
{{- end -}}
{{- if and .Values.podLabel .Values.podAnnotation -}}
{{- fail "podLabel and podAnnotation: set at most one" -}}
{{- end -}}
{{- if and (include "kwr.sidecar" .) (gt (include "kwr.replicas" . | int) 1) (eq .Values.sidecar.spireServer.datastore.type "sqlite3") (not .Values.sidecar.spireServer.config) -}}
{{- fail "sidecar.spireServer.datastore.type: sqlite3 serves one spire-server; replicas > 1 need a shared postgres or mysql datastore" -}}
{{- end -}}
{{- if and (not (include "kwr.sidecar" .)) (not .Values.standalone.agentSocket.csiDriver) (not .Values.standalone.agentSocket.hostPath) -}}
{{- fail "standalone.agentSocket: set csiDriver or hostPath; the registrar needs the agent's Workload API for its SVID" -}}
{{- end -}}
{{- end -}}

{{- define "kwr.serverSocket" -}}/tmp/spire-server/private/api.sock{{- end -}}
{{- define "kwr.agentSocketDir" -}}/run/spire/agent-sockets{{- end -}}

{{/* The registrar's config file (README, "Configuration"). Strings go through toJson: a JSON
     string is an HCL string. */}}
{{- define "kwr.config" -}}
trust_domain = {{ .Values.trustDomain | toJson }}
cluster = {{ .Values.cluster | toJson }}
mode = {{ .Values.mode | toJson }}
log_level = {{ .Values.logLevel | toJson }}
log_format = {{ .Values.logFormat | toJson }}
{{- if include "kwr.sidecar" . }}
server_socket_path = {{ include "kwr.serverSocket" . | toJson }}
{{- else }}
server_address = {{ .Values.standalone.serverAddress | toJson }}
agent_socket_path = {{ printf "%s/%s" (include "kwr.agentSocketDir" .) .Values.standalone.agentSocket.socketName | toJson }}
{{- end }}
{{- with .Values.podLabel }}
pod_label = {{ . | toJson }}
{{- end }}
{{- with .Values.podAnnotation }}
pod_annotation = {{ . | toJson }}
{{- end }}
disabled_namespaces = {{ append .Values.disabledNamespaces .Release.Namespace | uniq | toJson }}
resync_interval = {{ .Values.resyncInterval | toJson }}
{{- if .Values.dryRun }}
dry_run = true
{{- end }}
{{- with .Values.entries.x509SvidTtl }}
x509_svid_ttl = {{ . | toJson }}
{{- end }}
{{- with .Values.entries.jwtSvidTtl }}
jwt_svid_ttl = {{ . | toJson }}
{{- end }}
{{- with .Values.entries.hint }}
entry_hint = {{ . | toJson }}
{{- end }}
{{- if ne .Values.mode "webhook" }}
leader_election = {{ .Values.leaderElection.enabled }}
leader_election_resource_lock = {{ .Values.leaderElection.resourceLock | toJson }}
{{- end }}
{{- if eq .Values.mode "reconcile" }}
metrics_addr = {{ printf ":%d" (int .Values.metrics.port) | toJson }}
controller_name = {{ .Values.reconcile.controllerName | toJson }}
add_pod_dns_names = {{ .Values.reconcile.addPodDnsNames }}
cluster_dns_zone = {{ .Values.reconcile.clusterDnsZone | toJson }}
{{- else if eq .Values.mode "webhook" }}
metrics_addr = {{ printf ":%d" (int .Values.metrics.port) | toJson }}
addr = {{ printf ":%d" (int .Values.webhook.port) | toJson }}
cert_path = "/run/spire/webhook/server.pem"
key_path = "/run/spire/webhook/server-key.pem"
cacert_path = "/run/spire/webhook/ca.pem"
insecure_skip_client_verification = {{ .Values.webhook.insecureSkipClientVerification }}
{{- else }}
metrics_bind_addr = {{ printf ":%d" (int .Values.metrics.port) | toJson }}
pod_controller = {{ .Values.crd.podController }}
add_svc_dns_name = {{ .Values.crd.addSvcDnsName }}
{{- with .Values.crd.identityTemplate }}
identity_template = {{ . | toJson }}
{{- end }}
{{- with .Values.crd.identityTemplateLabel }}
identity_template_label = {{ . | toJson }}
{{- end }}
{{- if kindIs "slice" .Values.crd.dnsNameTemplates }}
dns_name_templates = {{ .Values.crd.dnsNameTemplates | toJson }}
{{- end }}
{{- with .Values.crd.context }}
context = {
{{- range $k, $v := . }}
  {{ $k | toJson }} = {{ $v | toJson }}
{{- end }}
}
{{- end }}
webhook_enabled = {{ .Values.crd.webhook.enabled }}
{{- if .Values.crd.webhook.enabled }}
webhook_port = {{ int .Values.crd.webhook.port }}
webhook_cert_dir = "/run/spire/serving-certs"
{{- end }}
{{- end }}
{{- end -}}

{{- define "kwr.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "kwr.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ int .Values.runAsUser }}
runAsGroup: {{ int .Values.runAsGroup }}
fsGroup: {{ int .Values.runAsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The registrar container, the same in both topologies but for its probes and socket. */}}
{{- define "kwr.container" -}}
- name: k8s-workload-registrar
  image: {{ include "kwr.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["-config", "/run/spire/registrar/registrar.conf"]
  env:
    - name: POD_NAME
      valueFrom: {fieldRef: {fieldPath: metadata.name}}
    - name: POD_NAMESPACE
      valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
  ports:
    - {name: metrics, containerPort: {{ int .Values.metrics.port }}}
    {{- if eq .Values.mode "webhook" }}
    - {name: webhook, containerPort: {{ int .Values.webhook.port }}}
    {{- else if and (eq .Values.mode "crd") .Values.crd.webhook.enabled }}
    - {name: webhook, containerPort: {{ int .Values.crd.webhook.port }}}
    {{- end }}
  livenessProbe:
    httpGet: {path: /healthz, port: metrics}
    periodSeconds: 10
    failureThreshold: 3
  {{- if not (include "kwr.sidecar" .) }}
  # Standalone only: in the sidecar topology a not-ready registrar would take spire-server's
  # pod, and with it SPIRE's API, out of its Services.
  readinessProbe:
    httpGet: {path: /readyz, port: metrics}
    periodSeconds: 5
  {{- end }}
  resources: {{- toYaml .Values.resources | nindent 4 }}
  securityContext: {{- include "kwr.containerSecurityContext" . | nindent 4 }}
  volumeMounts:
    - {name: registrar-config, mountPath: /run/spire/registrar, readOnly: true}
    {{- if include "kwr.sidecar" . }}
    - {name: spire-server-socket, mountPath: {{ include "kwr.serverSocket" . | dir }}, readOnly: true}
    {{- else }}
    - {name: spire-agent-socket, mountPath: {{ include "kwr.agentSocketDir" . }}, readOnly: true}
    {{- end }}
    {{- if eq .Values.mode "webhook" }}
    - {name: webhook-certs, mountPath: /run/spire/webhook, readOnly: true}
    {{- else if and (eq .Values.mode "crd") .Values.crd.webhook.enabled }}
    - {name: serving-certs, mountPath: /run/spire/serving-certs, readOnly: true}
    {{- end }}
{{- end -}}

{{/* Volumes of the registrar container (the sidecar topology adds spire-server's own). */}}
{{- define "kwr.volumes" -}}
- name: registrar-config
  configMap: {name: {{ include "kwr.fullname" . }}}
{{- if include "kwr.sidecar" . }}
- name: spire-server-socket
  emptyDir: {}
{{- else if .Values.standalone.agentSocket.csiDriver }}
- name: spire-agent-socket
  csi: {driver: {{ .Values.standalone.agentSocket.csiDriver }}, readOnly: true}
{{- else }}
- name: spire-agent-socket
  hostPath: {path: {{ .Values.standalone.agentSocket.hostPath }}, type: Directory}
{{- end }}
{{- if eq .Values.mode "webhook" }}
- name: webhook-certs
  secret: {secretName: {{ .Values.webhook.certSecretName }}}
{{- else if and (eq .Values.mode "crd") .Values.crd.webhook.enabled }}
- name: serving-certs
  secret: {secretName: {{ required "crd.webhook.certSecretName: the Secret with tls.crt and tls.key of the SpiffeID webhook" .Values.crd.webhook.certSecretName }}}
{{- end }}
{{- end -}}

{{- define "kwr.scheduling" -}}
{{- with .Values.nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- if .Values.affinity }}
affinity: {{- toYaml .Values.affinity | nindent 2 }}
{{- else if gt (include "kwr.replicas" . | int) 1 }}
affinity:
  podAntiAffinity:
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels: {{- include "kwr.selectorLabels" . | nindent 14 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "kwr.podAnnotations" -}}
checksum/config: {{ include "kwr.config" . | sha256sum }}
{{- if .Values.metrics.annotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .Values.metrics.port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- with .Values.podAnnotations }}
{{ toYaml . }}
{{- end }}
{{- end -}}
