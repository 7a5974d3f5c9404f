{{/*
Names. Kubernetes names are limited to 63 characters, so every name is cut there.
*/}}

{{/* The chart's name, or nameOverride. */}}
{{- define "buildfarm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release-wide prefix: fullnameOverride, else the release name (plus the chart name unless it contains it). */}}
{{- define "buildfarm.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* One component's object name: (dict "ctx" $ "component" "api") -> <fullname>-api. */}}
{{- define "buildfarm.componentName" -}}
{{- printf "%s-%s" (include "buildfarm.fullname" .ctx) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
A Service's full DNS name, <name>.<namespace>.svc.<clusterDomain>: what pods of another namespace
(the builders) must use, since a bare Service name resolves only inside its own namespace.
Called as (dict "ctx" $ "component" "minio").
*/}}
{{- define "buildfarm.serviceFqdn" -}}
{{- printf "%s.%s.svc.%s" (include "buildfarm.componentName" .) .ctx.Release.Namespace (.ctx.Values.clusterDomain | trimSuffix ".") -}}
{{- end -}}

{{/* chart label value: name-version. */}}
{{- define "buildfarm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}
