{{/*
An image reference from {repository, tag, digest}: repository:tag, or repository:tag@digest when a
digest is given (the digest is what the runtime pulls; the tag stays for people reading it).
Called as (dict "image" .Values.image "default" .Chart.AppVersion).
*/}}
{{- define "buildfarm-lib.image" -}}
{{- $tag := default .default .image.tag | toString -}}
{{- if not $tag -}}{{- fail (printf "image %s: a tag is required (no latest)" .image.repository) -}}{{- end -}}
{{- if eq $tag "latest" -}}{{- fail (printf "image %s: tag 'latest' is not allowed; pin a version" .image.repository) -}}{{- end -}}
{{- if .image.digest -}}
{{- printf "%s:%s@%s" .image.repository $tag .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* imagePullSecrets of every pod. */}}
{{- define "buildfarm-lib.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}
