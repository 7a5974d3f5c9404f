{{/*
Labels: the recommended app.kubernetes.io/* set plus component and part-of.
Called as (dict "ctx" $ "component" "api").
*/}}
{{- define "buildfarm-lib.labels" -}}
{{ include "buildfarm-lib.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: buildfarm
helm.sh/chart: {{ include "buildfarm-lib.chart" .ctx }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Selector labels: only values that never change over a release's life (no version, no chart),
because a Deployment's, StatefulSet's or DaemonSet's selector is immutable.
*/}}
{{- define "buildfarm-lib.selectorLabels" -}}
app.kubernetes.io/name: {{ include "buildfarm-lib.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Labels shared by every pod of the release (NetworkPolicy peers): name and instance. */}}
{{- define "buildfarm-lib.releaseSelectorLabels" -}}
app.kubernetes.io/name: {{ include "buildfarm-lib.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* metadata block for a namespaced object: (dict "ctx" $ "component" "api" "name" "<optional>") */}}
{{- define "buildfarm-lib.metadata" -}}
name: {{ default (include "buildfarm-lib.componentName" .) .name }}
namespace: {{ default .ctx.Release.Namespace .namespace }}
labels:
  {{- include "buildfarm-lib.labels" . | nindent 2 }}
{{- end -}}
