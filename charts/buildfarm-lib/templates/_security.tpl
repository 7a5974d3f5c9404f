{{/*
Security defaults: what Pod Security "restricted" asks for, on every control-plane pod.
*/}}

{{/* Pod-level securityContext: (dict "uid" 10001) — non-root, its own uid/gid, seccomp RuntimeDefault. */}}
{{- define "buildfarm-lib.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
fsGroup: {{ .uid }}
fsGroupChangePolicy: OnRootMismatch
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Container-level securityContext: read-only root filesystem, no privilege escalation, no capabilities. */}}
{{- define "buildfarm-lib.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The writable scratch directory a read-only root filesystem leaves: an emptyDir on /tmp. */}}
{{- define "buildfarm-lib.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ default "256Mi" .size }}
{{- end -}}

{{- define "buildfarm-lib.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}
