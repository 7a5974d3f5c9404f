{{/*
Exposure outside the cluster of the three front doors (the API, Pulp's content app, the registry):
a Service of any type and an optional Ingress, with TLS from an existing Secret.
Called as (dict "ctx" $ "component" "api" "values" .Values.api "port" 8781).
*/}}
{{- define "buildfarm.service" -}}
{{- $svc := .values.service -}}
apiVersion: v1
kind: Service
metadata:
  {{- include "buildfarm.metadata" (dict "ctx" .ctx "component" .component) | nindent 2 }}
  {{- with $svc.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $svc.type }}
  {{- if and (eq $svc.type "LoadBalancer") $svc.loadBalancerSourceRanges }}
  loadBalancerSourceRanges:
    {{- toYaml $svc.loadBalancerSourceRanges | nindent 4 }}
  {{- end }}
  selector:
    {{- include "buildfarm.selectorLabels" (dict "ctx" .ctx "component" .component) | nindent 4 }}
  ports:
    - name: http
      port: {{ $svc.port }}
      targetPort: http
      protocol: TCP
      {{- if and (has $svc.type (list "NodePort" "LoadBalancer")) $svc.nodePort }}
      nodePort: {{ $svc.nodePort }}
      {{- end }}
{{- end -}}

{{- define "buildfarm.ingress" -}}
{{- $ing := .values.ingress -}}
{{- if $ing.enabled }}
{{- if not $ing.hostname }}{{ fail (printf "%s ingress.enabled needs ingress.hostname" .component) }}{{ end }}
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  {{- include "buildfarm.metadata" (dict "ctx" .ctx "component" .component) | nindent 2 }}
  {{- with $ing.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  {{- with $ing.className }}
  ingressClassName: {{ . }}
  {{- end }}
  {{- if $ing.tlsSecret }}
  tls:
    - hosts: [{{ $ing.hostname | quote }}]
      secretName: {{ $ing.tlsSecret }}
  {{- end }}
  rules:
    - host: {{ $ing.hostname | quote }}
      http:
        paths:
          - path: {{ $ing.path }}
            pathType: {{ $ing.pathType }}
            backend:
              service:
                name: {{ include "buildfarm.componentName" (dict "ctx" .ctx "component" .component) }}
                port:
                  name: http
{{- end }}
{{- end -}}
