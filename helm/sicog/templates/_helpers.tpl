{{/* Names: the usual Helm convention, so `helm install sicog` gives sicog-scorer, sicog-sampler. */}}
{{- define "sicog.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "sicog.fullname" -}}
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

{{- define "sicog.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "scorer"). */}}
{{- define "sicog.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sicog.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/* The standard labels of every object: (dict "ctx" $ "component" "scorer"). */}}
{{- define "sicog.labels" -}}
helm.sh/chart: {{ include "sicog.chart" .ctx }}
{{ include "sicog.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: sicog
{{- end }}

{{/* The label the compiled pipeline puts on every task pod; NetworkPolicies admit only these. */}}
{{- define "sicog.clientLabel" -}}
sicog.io/client: "true"
{{- end }}

{{/* An image reference: (dict "image" .Values.x.image "default" .Values.image "ctx" $). Empty
     fields fall back to the default image, and its empty tag to the chart's appVersion. */}}
{{- define "sicog.image" -}}
{{- $repository := .image.repository | default .default.repository }}
{{- $tag := .image.tag | default .default.tag | default .ctx.Chart.AppVersion }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}

{{/* The S3 credentials Secret: the existing one, else the one generated for the bundled MinIO, else
     none (empty) when the service account carries a cloud role (serviceAccount.annotations, e.g.
     eks.amazonaws.com/role-arn): pods then find credentials through the AWS chain (sicog.store). */}}
{{- define "sicog.s3Secret" -}}
{{- if .Values.s3.existingSecret }}
{{- .Values.s3.existingSecret }}
{{- else if .Values.minio.enabled }}
{{- printf "%s-s3" (include "sicog.fullname" .) }}
{{- else if not .Values.serviceAccount.annotations }}
{{- fail "s3.existingSecret: name a Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or annotate serviceAccount with a cloud role, or set minio.enabled=true for a trial)" }}
{{- end }}
{{- end }}

{{/* SICOG_S3_ENDPOINT: s3.endpoint, else the bundled MinIO's Service, else empty (AWS S3). */}}
{{- define "sicog.s3Endpoint" -}}
{{- if .Values.s3.endpoint }}
{{- .Values.s3.endpoint }}
{{- else if .Values.minio.enabled }}
{{- printf "http://%s-minio.%s.svc:%d" (include "sicog.fullname" .) .Release.Namespace (int .Values.minio.port) }}
{{- end }}
{{- end }}

{{/* Env of a container that talks to the store (the model fetchers): endpoint and the Secret's keys
     (no Secret: none; the pod runs as the service account and its role gives the credentials). */}}
{{- define "sicog.s3Env" -}}
{{- $secret := include "sicog.s3Secret" . }}
{{- $endpoint := include "sicog.s3Endpoint" . }}
{{- if $endpoint }}
- name: SICOG_S3_ENDPOINT
  value: {{ $endpoint | quote }}
{{- end }}
{{- with .Values.s3.region }}
- name: AWS_REGION
  value: {{ . | quote }}
{{- end }}
{{- if $secret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: AWS_SECRET_ACCESS_KEY
{{- end }}
{{- end }}

{{/* Pod-level security of every pod: numeric non-root user, RuntimeDefault seccomp. */}}
{{- define "sicog.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .Values.podSecurity.runAsUser }}
runAsGroup: {{ .Values.podSecurity.runAsGroup }}
fsGroup: {{ .Values.podSecurity.fsGroup }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level security of every container (the restricted Pod Security Standard). */}}
{{- define "sicog.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: [ALL]
{{- end }}

{{/* Prometheus scrape annotations: (dict "ctx" $ "port" 8000). */}}
{{- define "sicog.scrapeAnnotations" -}}
{{- if .ctx.Values.metrics.scrapeAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/* NetworkPolicy peers: client pods of the release namespace and of networkPolicy.clientNamespaces. */}}
{{- define "sicog.clientPeers" -}}
- podSelector:
    matchLabels:
      {{- include "sicog.clientLabel" . | nindent 6 }}
{{- with .Values.networkPolicy.clientNamespaces }}
- namespaceSelector:
    matchExpressions:
      - key: kubernetes.io/metadata.name
        operator: In
        values: {{ toJson . }}
  podSelector:
    matchLabels:
      {{- include "sicog.clientLabel" $ | nindent 6 }}
{{- end }}
{{- end }}

{{/* NetworkPolicy peer: every pod of networkPolicy.monitoringNamespaces (Prometheus). */}}
{{- define "sicog.monitoringPeers" -}}
- namespaceSelector:
    matchExpressions:
      - key: kubernetes.io/metadata.name
        operator: In
        values: {{ toJson .Values.networkPolicy.monitoringNamespaces }}
{{- end }}

{{/* The sampler's port: sampler.port, or 0 for the engine's own (vLLM 8000, TGI 8080). */}}
{{- define "sicog.samplerPort" -}}
{{- $s := .Values.sampler }}
{{- if $s.port }}{{ $s.port }}{{ else }}{{ get (dict "vllm" 8000 "tgi" 8080) $s.engine }}{{ end }}
{{- end }}
