{{/*
A generated credential that stays stable across upgrades: the value already stored in the
Secret (found with `lookup`) is reused; only a first install generates one. `helm template` and
--dry-run cannot look up, so they show a fresh random value each time.
Called as (dict "ctx" $ "secret" "<name>" "key" "password" "length" 32); returns base64.
*/}}
{{- define "buildfarm.stableSecretValue" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .secret -}}
{{- if and $existing $existing.data (hasKey $existing.data .key) -}}
{{- index $existing.data .key -}}
{{- else -}}
{{- randAlphaNum (default 32 .length | int) | b64enc -}}
{{- end -}}
{{- end -}}

{{/* A Fernet-style key (urlsafe base64 of 32 random bytes), stable the same way; returns base64 of it. */}}
{{- define "buildfarm.stableFernetKey" -}}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace .secret -}}
{{- if and $existing $existing.data (hasKey $existing.data .key) -}}
{{- index $existing.data .key -}}
{{- else -}}
{{- randAlphaNum 32 | b64enc | replace "+" "-" | replace "/" "_" | b64enc -}}
{{- end -}}
{{- end -}}
