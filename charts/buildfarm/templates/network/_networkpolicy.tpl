{{/*
An ingress NetworkPolicy for one component: (dict "ctx" $ "component" "redis" "port" 6379 "from" "release"|"any"|"release+builders").
"release": only pods of this release; "any": every client (apt, browsers, builders); "release+builders": plus the builder namespace.
*/}}
{{- define "buildfarm.ingressPolicy" -}}
{{- $ctx := .ctx -}}
{{- if $ctx.Values.networkPolicy.enabled }}
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  {{- include "buildfarm-lib.metadata" (dict "ctx" $ctx "component" .component) | nindent 2 }}
spec:
  podSelector:
    matchLabels:
      {{- include "buildfarm-lib.selectorLabels" (dict "ctx" $ctx "component" .component) | nindent 6 }}
  policyTypes: ["Ingress"]
  ingress:
    - ports:
        - port: {{ .port }}
          protocol: TCP
      {{- if ne .from "any" }}
      from:
        - podSelector:
            matchLabels:
              {{- include "buildfarm-lib.releaseSelectorLabels" $ctx | nindent 14 }}
        {{- if eq .from "release+builders" }}
        - namespaceSelector:
            matchLabels:
              kubernetes.io/metadata.name: {{ include "buildfarm.builderNamespace" $ctx }}
        {{- end }}
      {{- end }}
{{- end }}
{{- end -}}
