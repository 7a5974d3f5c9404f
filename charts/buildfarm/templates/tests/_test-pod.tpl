{{/* A `helm test` pod running a short Python check in the farm image: (dict "ctx" $ "name" "api" "script" "...") */}}
{{- define "buildfarm.testPod" -}}
{{- $ctx := .ctx -}}
apiVersion: v1
kind: Pod
metadata:
  {{- include "buildfarm-lib.metadata" (dict "ctx" $ctx "component" "test" "name" (include "buildfarm-lib.componentName" (dict "ctx" $ctx "component" (printf "test-%s" .name)))) | nindent 2 }}
  annotations:
    helm.sh/hook: test
    helm.sh/hook-delete-policy: before-hook-creation,hook-succeeded
    {{- include "buildfarm.checkovSkips" (dict "ids" (list "CKV_K8S_43" "CKV_K8S_15" "CKV_K8S_35" "CKV_K8S_8" "CKV_K8S_9")) | nindent 4 }}
spec:
  restartPolicy: Never
  serviceAccountName: {{ include "buildfarm.controlServiceAccount" $ctx }}
  automountServiceAccountToken: false
  # no <SERVICE>_PORT variables: the farm's Services are buildfarm-*, and a farm process refuses
  # BUILDFARM_* variables that are no setting (model/settings.py)
  enableServiceLinks: false
  {{- include "buildfarm-lib.imagePullSecrets" $ctx | nindent 2 }}
  securityContext:
    {{- include "buildfarm-lib.podSecurityContext" (dict "uid" (include "buildfarm.farmUid" $ctx)) | nindent 4 }}
  containers:
    - name: {{ .name }}
      {{- include "buildfarm.farmContainer" $ctx | nindent 6 }}
      command: ["python", "-c", {{ .script | quote }}]
      resources:
        requests: {cpu: 10m, memory: 64Mi}
        limits: {cpu: 200m, memory: 256Mi}
      volumeMounts:
        {{- include "buildfarm-lib.tmpVolumeMount" $ctx | nindent 8 }}
  volumes:
    {{- include "buildfarm-lib.tmpVolume" (dict) | nindent 4 }}
{{- end -}}
