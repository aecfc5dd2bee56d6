{{/* Names and labels ------------------------------------------------------------------------ */}}

{{- define "mangaassist.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "mangaassist.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mangaassist.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mangaassist.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "mangaassist.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "mangaassist.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mangaassist
{{- end }}

{{- define "mangaassist.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mangaassist.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "mangaassist.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The Serve config (serveConfigV2): one application, the deployments in the graph's order.
     Ray refuses settings for a deployment the app does not build: DriftMonitor only with drift on. */}}

{{- define "mangaassist.deploymentNames" -}}
{{- list "Gateway" "IntentClassifier" "Embedder" "Retriever" "Reranker" "Generator" "DriftMonitor" | toJson }}
{{- end }}

{{- define "mangaassist.serveConfig" -}}
{{- $deployments := list }}
{{- $drift := ne ((.Values.serve.args.drift | default dict).enabled | toString) "false" }}
{{- range $name := include "mangaassist.deploymentNames" . | fromJsonArray }}
{{- if or (ne $name "DriftMonitor") $drift }}
{{- $settings := deepCopy (get $.Values.serve.deployments $name | default dict) }}
{{- $deployments = append $deployments (set $settings "name" $name) }}
{{- end }}
{{- end }}
{{- $app := dict "name" "mangaassist" "route_prefix" "/" "import_path" "serve.app:build_app" "args" .Values.serve.args "deployments" $deployments }}
{{- $config := dict "proxy_location" .Values.serve.proxyLocation "http_options" (dict "host" "0.0.0.0" "port" (int .Values.serve.port) "request_timeout_s" .Values.serve.requestTimeoutS) "applications" (list $app) }}
{{- toYaml $config }}
{{- end }}

{{/* The env ConfigMap's data: its checksum rolls the Ray pods when it changes ---------------- */}}

{{- define "mangaassist.envData" -}}
MANGAASSIST_HOME: /home/ray/mangaassist
MANGAASSIST_MODEL_CACHE: /home/ray/model-cache
DO_NOT_TRACK: "1"
HF_HUB_OFFLINE: "1"
RAY_SERVE_THROUGHPUT_OPTIMIZED: {{ ternary "1" "0" .Values.serve.throughputOptimized | quote }}
{{- if not (hasKey .Values.env "RAY_SERVE_ENABLE_DIRECT_INGRESS") }}
RAY_SERVE_ENABLE_DIRECT_INGRESS: "0"
{{- end }}
{{- range $key, $value := .Values.env }}
{{ $key }}: {{ $value | toString | quote }}
{{- end }}
{{- end }}

{{/* Pod pieces shared by the head and the worker groups -------------------------------------- */}}

{{/* metadata of a Ray pod template; arg: (dict "ctx" $ "component" "head") */}}
{{- define "mangaassist.podMetadata" -}}
labels:
  {{- include "mangaassist.labels" .ctx | nindent 2 }}
  app.kubernetes.io/component: {{ .component }}
annotations:
  checksum/env: {{ include "mangaassist.envData" .ctx | sha256sum }}
{{- end }}

{{/* the Ray container of a pod; arg: (dict "ctx" $ "ports" (list ...) "resources" ...) */}}
{{- define "mangaassist.rayContainer" -}}
{{- $ := .ctx -}}
- name: ray
  image: {{ include "mangaassist.image" $ }}
  imagePullPolicy: {{ $.Values.image.pullPolicy }}
  # No probes here on purpose: KubeRay injects its own (raylet and GCS health on the head; raylet
  # and the Serve proxy's /-/healthz on workers) and a user-defined probe would replace them.
  ports:
    {{- range .ports }}
    - name: {{ .name }}
      containerPort: {{ .port }}
      protocol: TCP
    {{- end }}
  envFrom:
    - configMapRef:
        name: {{ include "mangaassist.fullname" $ }}-env
    {{- with $.Values.secrets.apiKeys.existingSecret }}
    - secretRef:
        name: {{ . }}
    {{- end }}
  {{- with $.Values.secrets.opensearch.existingSecret }}
  env:
    - name: OPENSEARCH_USERNAME
      valueFrom:
        secretKeyRef: {name: {{ . }}, key: {{ $.Values.secrets.opensearch.usernameKey }}}
    - name: OPENSEARCH_PASSWORD
      valueFrom:
        secretKeyRef: {name: {{ . }}, key: {{ $.Values.secrets.opensearch.passwordKey }}}
  {{- end }}
  resources:
    {{- toYaml .resources | nindent 4 }}
  securityContext:
    {{- toYaml $.Values.securityContext | nindent 4 }}
  volumeMounts:
    - {name: dshm, mountPath: /dev/shm}
    - {name: model-store, mountPath: /home/ray/mangaassist, readOnly: {{ if $.Values.modelStore.existingClaim }}true{{ else }}false{{ end }}}
    - {name: model-cache, mountPath: /home/ray/model-cache}
{{- end }}

{{/* the pod spec of a Ray pod; arg: (dict "ctx" $ "group" .Values.head "container" <yaml> "automount" bool) */}}
{{- define "mangaassist.podSpec" -}}
{{- $ := .ctx -}}
serviceAccountName: {{ include "mangaassist.serviceAccountName" $ }}
automountServiceAccountToken: {{ .automount }}
{{- with $.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $.Values.podSecurityContext | nindent 2 }}
{{- with .group.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .group.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .group.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
containers:
  {{- .container | nindent 2 }}
volumes:
  - name: dshm
    emptyDir: {medium: Memory, sizeLimit: {{ .group.shmSizeLimit }}}
  {{- if $.Values.modelStore.existingClaim }}
  - name: model-store
    persistentVolumeClaim: {claimName: {{ $.Values.modelStore.existingClaim }}, readOnly: true}
  {{- else }}
  - name: model-store
    emptyDir: {}
  {{- end }}
  - name: model-cache
    emptyDir: {sizeLimit: {{ $.Values.modelStore.cacheSizeLimit }}}
{{- end }}

{{/* rayStartParams: every value a string, as the CRD requires */}}
{{- define "mangaassist.rayStartParams" -}}
{{- $params := dict }}
{{- range $key, $value := . }}
{{- $_ := set $params $key (toString $value) }}
{{- end }}
{{- toYaml $params }}
{{- end }}
