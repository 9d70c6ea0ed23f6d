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

{{/* An alert's runbook_url annotation, from (list runbookBaseUrl alertName): the section of
deploy/README.md headed with the alert's name, whose GitHub anchor is the name in lower case.
Nothing when the base URL is empty. */}}
{{- define "periscope.runbookUrl" -}}
{{- $base := index . 0 }}
{{- $alert := index . 1 }}
{{- with $base -}}
runbook_url: {{ printf "%s#%s" (trimSuffix "/" .) (lower $alert) }}
{{- end }}
{{- end }}

{{/* A ratio as a percentage for the alerts' text: 0.05 → 5%, 0.001 → 0.1%. */}}
{{- define "periscope.percent" -}}
{{- round (mulf . 100) 4 }}%
{{- end }}

{{/* Refuses alert values Prometheus or the Operator would not take (or that would make an
alert that can never fire), naming the value and the fix. */}}
{{- define "periscope.checkAlerts" -}}
{{- $workload := list "httpServerErrorRatio" "httpServerLatencyP99" "postgresErrorRatio" "kafkaErrorRatio" }}
{{- $ratios := list "httpServerErrorRatio" "postgresErrorRatio" "kafkaErrorRatio" "kernelEventsLost" }}
{{- $noThreshold := list "kubernetesAPIUnreachable" "agentDown" "agentAbsent" }}
{{- range $name := concat $workload (list "kernelEventsLost" "flowEventsLost" "spansDropped" "seriesDropped") $noThreshold }}
{{- $alert := index $.Values.alerts $name | default (dict) }}
{{- if not (and (kindIs "string" $alert.for) (regexMatch "^([0-9]+(ms|s|m|h|d|w|y))+$" (toString $alert.for))) }}
{{- fail (printf "alerts.%s.for: %v is not a Prometheus duration; write it with its unit, e.g. 10m, 1h30m or 0s" $name $alert.for) }}
{{- end }}
{{- $keys := list }}
{{- if not (has $name $noThreshold) }}{{ $keys = append $keys "threshold" }}{{ end }}
{{- if has $name $workload }}{{ $keys = append $keys "minRate" }}{{ end }}
{{- range $key := $keys }}
{{- $value := index $alert $key }}
{{- if not (or (kindIs "float64" $value) (kindIs "int64" $value) (kindIs "int" $value)) }}
{{- fail (printf "alerts.%s.%s: %v is not a number; write e.g. %v" $name $key $value (index (dict "threshold" "0.05" "minRate" "0.1") $key)) }}
{{- else if lt (float64 $value) 0.0 }}
{{- fail (printf "alerts.%s.%s: %v is negative; write 0 or more" $name $key $value) }}
{{- else if and (eq $key "threshold") (has $name $ratios) (gt (float64 $value) 1.0) }}
{{- fail (printf "alerts.%s.threshold: %v is above 1, and the ratio it is compared with never is; write a fraction between 0 and 1, e.g. 0.05 for 5%%" $name $value) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
