{{/* The uid of the Pulp image (buildtools/images/pulp/Dockerfile). */}}
{{- define "buildfarm.pulpUid" -}}10010{{- end -}}

{{- define "buildfarm.pulpSecret" -}}
{{- default (include "buildfarm.componentName" (dict "ctx" . "component" "pulp")) .Values.pulp.keysExistingSecret -}}
{{- end -}}

{{/* The Pulp container's common part: image, settings file, credentials from Secrets. */}}
{{- define "buildfarm.pulpContainer" -}}
image: {{ include "buildfarm.image" (dict "image" .Values.pulp.image "default" .Chart.AppVersion) }}
imagePullPolicy: {{ .Values.pulp.image.pullPolicy }}
securityContext:
  {{- include "buildfarm.containerSecurityContext" . | nindent 2 }}
env:
  - name: PULP_SETTINGS
    value: /etc/pulp/settings.py
  - name: HOME
    value: /tmp
  - name: PULP_DB_PASSWORD
    valueFrom:
      secretKeyRef:
        name: {{ include "buildfarm.databaseSecret" . }}
        key: {{ include "buildfarm.databaseSecretKey" . }}
  {{- include "buildfarm.databaseCaEnv" . | nindent 2 }}
  - name: PULP_SECRET_KEY
    valueFrom:
      secretKeyRef:
        name: {{ include "buildfarm.pulpSecret" . }}
        key: secretKey
  {{- if eq .Values.pulp.storage.type "s3" }}
  - name: PULP_S3_ACCESS_KEY
    valueFrom:
      secretKeyRef:
        name: {{ include "buildfarm.s3Secret" . }}
        key: {{ include "buildfarm.s3AccessKeyKey" . }}
  - name: PULP_S3_SECRET_KEY
    valueFrom:
      secretKeyRef:
        name: {{ include "buildfarm.s3Secret" . }}
        key: {{ include "buildfarm.s3SecretKeyKey" . }}
  {{- end }}
{{- end -}}

{{/* The signing service the pulp-signing Job registers (ops/pulp/pulpstack.py's name too). */}}
{{- define "buildfarm.pulpSigningService" -}}buildfarm{{- end -}}

{{/* "true" when pulp.signing names a Secret with the farm's key, else empty. */}}
{{- define "buildfarm.pulpSigning" -}}
{{- if .Values.pulp.signing.existingSecret }}true{{ end -}}
{{- end -}}

{{/* Where the signing script finds the key (buildtools/images/pulp/sign-release.sh): the Secret,
     imported on first use into a GNUPGHOME in the pod's own /tmp. */}}
{{- define "buildfarm.pulpSigningEnv" -}}
- name: BUILDFARM_SIGNING_KEY_FILE
  value: /etc/pulp/signing/signing.asc
- name: BUILDFARM_SIGNING_GNUPGHOME
  value: /tmp/gnupg
{{- end -}}

{{- define "buildfarm.pulpSigningVolumeMount" -}}
- name: signing-key
  mountPath: /etc/pulp/signing
  readOnly: true
{{- end -}}

{{- define "buildfarm.pulpSigningVolume" -}}
- name: signing-key
  secret:
    secretName: {{ .Values.pulp.signing.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ .Values.pulp.signing.key }}
        path: signing.asc
{{- end -}}

{{- define "buildfarm.pulpVolumeMounts" -}}
- name: settings
  mountPath: /etc/pulp/settings.py
  subPath: settings.py
  readOnly: true
- name: keys
  mountPath: /etc/pulp/keys
  readOnly: true
- name: data
  mountPath: /var/lib/pulp
# WORKING_DIRECTORY and FILE_UPLOAD_TEMP_DIR (pulp-configmap.yaml): pulpcore-content chdirs into it
# at start and uploads are written there, so it must exist in every Pulp pod, whatever the data
# volume is (a fresh emptyDir or PVC has no tmp/): a volume of its own, mounted on that path.
- name: working-directory
  mountPath: /var/lib/pulp/tmp
{{ include "buildfarm.tmpVolumeMount" . }}
{{- include "buildfarm.databaseCaVolumeMount" . }}
{{- end -}}

{{- define "buildfarm.pulpVolumes" -}}
- name: settings
  configMap:
    name: {{ include "buildfarm.componentName" (dict "ctx" . "component" "pulp") }}
- name: keys
  secret:
    secretName: {{ include "buildfarm.pulpSecret" . }}
    items:
      - key: dbEncryptionKey
        path: database_fields.symmetric.key
- name: data
  {{- if eq .Values.pulp.storage.type "pvc" }}
  persistentVolumeClaim:
    claimName: {{ include "buildfarm.componentName" (dict "ctx" . "component" "pulp") }}
  {{- else }}
  emptyDir:
    sizeLimit: 4Gi
  {{- end }}
- name: working-directory
  emptyDir:
    sizeLimit: {{ .Values.pulp.workingDirectorySize }}
{{ include "buildfarm.tmpVolume" (dict) }}
{{- include "buildfarm.databaseCaVolume" . }}
{{- end -}}

{{/* Init container of every Pulp pod: waits (bounded, 10 minutes) until the pulp-migrate Job has
     applied every migration this image has, so no Pulp process meets an older schema. */}}
{{- define "buildfarm.pulpWaitContainer" -}}
- name: wait-migrations
  {{- include "buildfarm.pulpContainer" . | nindent 2 }}
  command:
    - sh
    - -c
    - |
      i=0
      until pulpcore-manager migrate --check >/dev/null 2>&1; do
        i=$((i+1))
        [ "$i" -lt 120 ] || { echo "Pulp's database is not migrated after 10 minutes: see the pulp-migrate Job"; exit 1; }
        sleep 5
      done
  resources:
    requests: {cpu: 10m, memory: 128Mi}
    limits: {cpu: 500m, memory: 512Mi}
  volumeMounts:
    {{- include "buildfarm.pulpVolumeMounts" . | nindent 4 }}
{{- end -}}

{{/* Is this pod's pulpcore-worker online? Its AppStatus row (app_type worker, named
     <pid>@<hostname> by WORKER_NAME_TEMPLATE) has a heartbeat younger than its TTL.
     pulpcore >= 3.54 keeps workers in AppStatus; the Worker model is gone. */}}
{{- define "buildfarm.pulpWorkerProbe" -}}
exec:
  command:
    - pulpcore-manager
    - shell
    - -c
    - "import socket, sys; from pulpcore.app.models import AppStatus; sys.exit(0 if AppStatus.objects.online().filter(app_type='worker', name__endswith='@' + socket.gethostname()).exists() else 1)"
{{- end -}}

{{/* A Pulp Deployment: (dict "ctx" $ "component" "pulp-api" "values" .Values.pulp.api "command" list "port" 24817) */}}
{{- define "buildfarm.pulpDeployment" -}}
{{- $ctx := .ctx -}}
{{- /* Tasks (publications, so signing) run in the worker; the API runs a task itself when it
       dispatches one as immediate.  The content app never signs. */ -}}
{{- $signing := and (include "buildfarm.pulpSigning" $ctx) (has .component (list "pulp-api" "pulp-worker")) -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  {{- include "buildfarm.metadata" (dict "ctx" $ctx "component" .component) | nindent 2 }}
  annotations:
    {{- include "buildfarm.checkovSkips" (dict "ids" (list "CKV_K8S_43" "CKV_K8S_15" "CKV_K8S_35")) | nindent 4 }}
spec:
  replicas: {{ .values.replicaCount }}
  selector:
    matchLabels:
      {{- include "buildfarm.selectorLabels" (dict "ctx" $ctx "component" .component) | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "buildfarm.labels" (dict "ctx" $ctx "component" .component) | nindent 8 }}
      annotations:
        checksum/pulp-settings: {{ include (print $ctx.Template.BasePath "/pulp/pulp-configmap.yaml") $ctx | sha256sum }}
    spec:
      serviceAccountName: {{ include "buildfarm.componentName" (dict "ctx" $ctx "component" "control") }}
      automountServiceAccountToken: false
      {{- include "buildfarm.imagePullSecrets" $ctx | nindent 6 }}
      securityContext:
        {{- include "buildfarm.podSecurityContext" (dict "uid" (include "buildfarm.pulpUid" $ctx)) | nindent 8 }}
      initContainers:
        {{- include "buildfarm.pulpWaitContainer" $ctx | nindent 8 }}
      containers:
        - name: {{ .component }}
          {{- include "buildfarm.pulpContainer" $ctx | nindent 10 }}
            {{- if $signing }}
            {{- include "buildfarm.pulpSigningEnv" $ctx | nindent 12 }}
            {{- end }}
          command: {{ toJson .command }}
          {{- if .port }}
          ports:
            - name: http
              containerPort: {{ .port }}
              protocol: TCP
          readinessProbe:
            {{- if eq .component "pulp-api" }}
            httpGet: {path: /pulp/api/v3/status/, port: http}
            {{- else }}
            tcpSocket: {port: http}
            {{- end }}
            periodSeconds: 10
            timeoutSeconds: 5
          livenessProbe:
            tcpSocket: {port: http}
            initialDelaySeconds: 30
            periodSeconds: 20
          {{- else }}
          readinessProbe:
            {{- include "buildfarm.pulpWorkerProbe" $ctx | nindent 12 }}
            initialDelaySeconds: 20
            periodSeconds: 60
            timeoutSeconds: 30
          livenessProbe:
            {{- include "buildfarm.pulpWorkerProbe" $ctx | nindent 12 }}
            initialDelaySeconds: 60
            periodSeconds: 120
            timeoutSeconds: 30
          {{- end }}
          resources:
            {{- toYaml .values.resources | nindent 12 }}
          volumeMounts:
            {{- include "buildfarm.pulpVolumeMounts" $ctx | nindent 12 }}
            {{- if $signing }}
            {{- include "buildfarm.pulpSigningVolumeMount" $ctx | nindent 12 }}
            {{- end }}
      volumes:
        {{- include "buildfarm.pulpVolumes" $ctx | nindent 8 }}
        {{- if $signing }}
        {{- include "buildfarm.pulpSigningVolume" $ctx | nindent 8 }}
        {{- end }}
{{- end -}}
