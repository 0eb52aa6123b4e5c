{{/*
Helpers shared by every template of the chart (the dashboards templates use them too).
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "taxi-pipeline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, else <release>-<name>, or just the release name
when it already contains the chart name. 63 characters at most (DNS label).
*/}}
{{- define "taxi-pipeline.fullname" -}}
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

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "taxi-pipeline.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object of the release: commonLabels, and the chart's own, which win. */}}
{{- define "taxi-pipeline.labels" -}}
{{- $own := dict
  "helm.sh/chart" (include "taxi-pipeline.chart" .)
  "app.kubernetes.io/version" .Chart.AppVersion
  "app.kubernetes.io/managed-by" .Release.Service
  "app.kubernetes.io/part-of" "taxi-pipeline" }}
{{- $own = merge $own (include "taxi-pipeline.selectorLabels" . | fromYaml) }}
{{- toYaml (merge $own (deepCopy .Values.commonLabels)) }}
{{- end }}

{{/* The labels that identify the release's objects (immutable: they end up in selectors). */}}
{{- define "taxi-pipeline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "taxi-pipeline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The operator pods' selector: the release's selector labels plus the component, so that other pods
of the release (the saved-objects Job) are never selected by the operator's Service or PDB.
*/}}
{{- define "taxi-pipeline.operatorSelectorLabels" -}}
{{ include "taxi-pipeline.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
An image reference from an image value (repository, tag, digest): repository@digest when there is a
digest, which wins over the tag, else repository:tag with the tag defaulting to defaultTag.
Pass (dict "image" IMAGE "defaultTag" TAG).
*/}}
{{- define "taxi-pipeline.imageRef" -}}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository (default .defaultTag .image.tag) }}
{{- end }}
{{- end }}

{{/* The chart image; the tag defaults to the chart's appVersion. */}}
{{- define "taxi-pipeline.image" -}}
{{- include "taxi-pipeline.imageRef" (dict "image" .Values.image "defaultTag" .Chart.AppVersion) }}
{{- end }}

{{/* The worker image the operator gives pipelines without spec.worker.image. */}}
{{- define "taxi-pipeline.workerImage" -}}
{{- default (include "taxi-pipeline.image" .) .Values.operator.workerImage }}
{{- end }}

{{/*
A label map as the operator's flags take it: "k=v,k=v", keys sorted. Pass the map itself.
*/}}
{{- define "taxi-pipeline.labelFlag" -}}
{{- $pairs := list }}
{{- range $key, $value := . }}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) }}
{{- end }}
{{- join "," $pairs }}
{{- end }}

{{/* The names of imagePullSecrets, comma-separated, for --worker-image-pull-secrets. */}}
{{- define "taxi-pipeline.imagePullSecretNames" -}}
{{- $names := list }}
{{- range .Values.imagePullSecrets }}
{{- $names = append $names .name }}
{{- end }}
{{- join "," $names }}
{{- end }}

{{/* The operator's ServiceAccount. */}}
{{- define "taxi-pipeline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "taxi-pipeline.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The namespaces the operator watches, as a JSON list (use with fromJsonArray): operator.watchNamespaces,
else the release namespace; an empty list means every namespace (only with rbac.clusterWide).
*/}}
{{- define "taxi-pipeline.watchNamespaces" -}}
{{- if .Values.operator.watchNamespaces }}
{{- .Values.operator.watchNamespaces | uniq | toJson }}
{{- else if .Values.rbac.clusterWide }}
{{- list | toJson }}
{{- else }}
{{- list .Release.Namespace | toJson }}
{{- end }}
{{- end }}
