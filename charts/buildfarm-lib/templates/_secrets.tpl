{{/*
A generated credential that stays stable across upgrades: the value already stored in the
Secret (found with `lookup`) is reused; only a first install generates one. Within one render
every caller of the same (secret, key) gets the same value (one generated value, however many
objects embed it), cached on the root context.

`helm template`, client-side --dry-run and Argo CD cannot look up. An upgrade (.Release.IsUpgrade)
that finds no stored value would silently generate a new one; for a credential that data was
written with (a database password, an encryption key) that loses the data, so with "failOnUpgrade"
the render fails instead, naming the existingSecret value that avoids it (as bitnami's
common.errors.upgrade.passwords.empty does).
Called as (dict "ctx" $ "secret" "<name>" "key" "password" "length" 32 ["failOnUpgrade" true "value" "postgresql.existingSecret"]);
returns base64.
*/}}
{{- define "buildfarm.stableSecretValue" -}}
{{- if not (hasKey .ctx "buildfarmGeneratedSecrets") -}}
{{- $_ := set .ctx "buildfarmGeneratedSecrets" (dict) -}}
{{- end -}}
{{- $cache := get .ctx "buildfarmGeneratedSecrets" -}}
{{- $id := printf "%s/%s" .secret .key -}}
{{- if not (hasKey $cache $id) -}}
{{- $existing := lookup "v1" "Secret" (default .ctx.Release.Namespace .namespace) .secret -}}
{{- if and $existing $existing.data (hasKey $existing.data .key) -}}
{{- $_ := set $cache $id (index $existing.data .key) -}}
{{- else if and .failOnUpgrade .ctx.Release.IsUpgrade -}}
{{- fail (printf "UPGRADE REFUSED: Secret %s (key %s) was not found, so this upgrade would generate a new value and the data written with the old one (%s) would no longer open. Run the upgrade against the cluster (lookup needs it: not helm template, not a client-side --dry-run), or create a Secret with the current value and set %s." .secret .key .secret (default "its existingSecret value" .value)) -}}
{{- else if .fernet -}}
{{- $_ := set $cache $id (randAlphaNum 32 | b64enc | replace "+" "-" | replace "/" "_" | b64enc) -}}
{{- else -}}
{{- $_ := set $cache $id (randAlphaNum (default 32 .length | int) | b64enc) -}}
{{- end -}}
{{- end -}}
{{- index $cache $id -}}
{{- end -}}

{{/* A Fernet-style key (urlsafe base64 of 32 random bytes), stable the same way; returns base64 of it. */}}
{{- define "buildfarm.stableFernetKey" -}}
{{- include "buildfarm.stableSecretValue" (merge (dict "fernet" true) .) -}}
{{- end -}}
