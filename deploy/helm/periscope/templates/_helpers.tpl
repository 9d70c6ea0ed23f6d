{{/* The chart's name, or nameOverride. */}}
{{- define "periscope.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object names: the release name, prefixed with the chart name unless it already holds it. */}}
{{- define "periscope.fullname" -}}
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

{{/* What selects the agent pods; never changes across upgrades. */}}
{{- define "periscope.selectorLabels" -}}
app.kubernetes.io/name: {{ include "periscope.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "periscope.labels" -}}
{{ include "periscope.selectorLabels" . }}
app.kubernetes.io/component: agent
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/* The agent pods' labels (no chart version: a chart upgrade alone must not restart pods). */}}
{{- define "periscope.podLabels" -}}
{{ include "periscope.selectorLabels" . }}
app.kubernetes.io/component: agent
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}

{{- define "periscope.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "periscope.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "periscope.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* How a ServiceMonitor or PodMonitor endpoint reaches a protected /metrics (metricsAuth). */}}
{{- define "periscope.scrapeAuth" -}}
{{- with .Values.metricsAuth }}
{{- if .tlsSecret }}
{{- if not .serverName }}
{{- fail "metricsAuth.tlsSecret needs metricsAuth.serverName: a DNS name in the certificate, since agents are scraped by pod IP" }}
{{- end }}
scheme: https
tlsConfig:
  serverName: {{ .serverName | quote }}
  ca:
    secret:
      name: {{ .tlsSecret | quote }}
      key: ca.crt
{{- end }}
{{- if .tokenSecret }}
authorization:
  type: Bearer
  credentials:
    name: {{ .tokenSecret | quote }}
    key: token
{{- end }}
{{- end }}
{{- end }}
