{{- define "buildfarm.registryEnv" -}}
{{- if or (eq .Values.registry.storage.type "s3") .Values.registry.extraEnvVars }}
env:
{{- with .Values.registry.extraEnvVars }}
{{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- if eq .Values.registry.storage.type "s3" }}
  - name: REGISTRY_STORAGE_S3_ACCESSKEY
    valueFrom:
      secretKeyRef:
        name: {{ include "buildfarm.s3Secret" (dict "ctx" . "service" "registry") }}
        key: {{ include "buildfarm.s3AccessKeyKey" (dict "ctx" . "service" "registry") }}
  - name: REGISTRY_STORAGE_S3_SECRETKEY
    valueFrom:
      secretKeyRef:
        name: {{ include "buildfarm.s3Secret" (dict "ctx" . "service" "registry") }}
        key: {{ include "buildfarm.s3SecretKeyKey" (dict "ctx" . "service" "registry") }}
{{- end }}
{{- end -}}

{{- define "buildfarm.registryVolumes" -}}
- name: config
  configMap:
    name: {{ include "buildfarm-lib.componentName" (dict "ctx" . "component" "registry") }}
- name: data
  {{- if eq .Values.registry.storage.type "pvc" }}
  persistentVolumeClaim:
    claimName: {{ include "buildfarm-lib.componentName" (dict "ctx" . "component" "registry") }}
  {{- else }}
  emptyDir:
    sizeLimit: 1Gi
  {{- end }}
{{- if .Values.registry.auth.enabled }}
- name: htpasswd
  secret:
    secretName: {{ include "buildfarm.registryAuthSecret" . }}
    items:
      - key: htpasswd
        path: htpasswd
{{- end }}
{{ include "buildfarm-lib.tmpVolume" (dict) }}
{{- end -}}

{{- define "buildfarm.registryVolumeMounts" -}}
- name: config
  mountPath: /etc/docker/registry
  readOnly: true
- name: data
  mountPath: /var/lib/registry
{{- if .Values.registry.auth.enabled }}
- name: htpasswd
  mountPath: /etc/docker/registry-auth
  readOnly: true
{{- end }}
{{ include "buildfarm-lib.tmpVolumeMount" . }}
{{- end -}}
