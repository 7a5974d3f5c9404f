{{/*
Helpers of the umbrella chart: where each backend is and how the farm's processes are configured.
Generic helpers (names, labels, security defaults) are in the buildfarm-lib library chart.
*/}}

{{/* The builder namespace. */}}
{{- define "buildfarm.builderNamespace" -}}
{{- default (printf "%s-builders" .Release.Namespace) .Values.builders.namespace.name -}}
{{- end -}}

{{/*
Pod Security level of the builder namespace, and why. Builders are not control-plane pods:
- sysbox off: sbuild builds in an unshare chroot, which needs user namespaces inside the pod;
  the RuntimeDefault seccomp profile blocks unshare(CLONE_NEWUSER), so builder pods run with
  seccomp Unconfined, which only the "privileged" level admits.
- sysbox on: the sysbox runtime gives each pod its own user namespace (root in the pod is an
  unprivileged uid on the node), so builders need no privileges the "baseline" level forbids;
  they still run as root inside the pod (kaniko, apt), which "restricted" would refuse.
*/}}
{{- define "buildfarm.builderPodSecurityLevel" -}}baseline{{- end -}}

{{- define "buildfarm.builderPodSecurityReason" -}}
builder pods run one command as container root (apt and dpkg in package pods, kaniko writing into /) with every capability dropped but CHOWN, DAC_OVERRIDE, FOWNER, FSETID, SETGID, SETUID, seccomp RuntimeDefault and no privilege escalation; sysbox pods add a user namespace; restricted would refuse root, baseline admits them
{{- end -}}

{{/* PostgreSQL host, Secret and key of the password. */}}
{{- define "buildfarm.databaseHost" -}}
{{- if .Values.postgresql.enabled -}}{{ include "buildfarm-lib.componentName" (dict "ctx" . "component" "postgresql") }}{{- else -}}{{ required "externalDatabase.host is required when postgresql.enabled is false" .Values.externalDatabase.host }}{{- end -}}
{{- end -}}

{{- define "buildfarm.databasePort" -}}
{{- if .Values.postgresql.enabled -}}5432{{- else -}}{{ .Values.externalDatabase.port }}{{- end -}}
{{- end -}}

{{- define "buildfarm.databaseUser" -}}
{{- if .Values.postgresql.enabled -}}{{ .Values.postgresql.username }}{{- else -}}{{ .Values.externalDatabase.username }}{{- end -}}
{{- end -}}

{{- define "buildfarm.databaseSecret" -}}
{{- if .Values.postgresql.enabled -}}
{{- default (include "buildfarm-lib.componentName" (dict "ctx" . "component" "postgresql")) .Values.postgresql.existingSecret -}}
{{- else -}}
{{- required "externalDatabase.existingSecret is required when postgresql.enabled is false (credentials only through Secrets)" .Values.externalDatabase.existingSecret -}}
{{- end -}}
{{- end -}}

{{- define "buildfarm.databaseSecretKey" -}}
{{- if .Values.postgresql.enabled -}}password{{- else -}}{{ .Values.externalDatabase.passwordKey }}{{- end -}}
{{- end -}}

{{- define "buildfarm.farmDatabase" -}}
{{- if .Values.postgresql.enabled -}}{{ .Values.postgresql.farmDatabase }}{{- else -}}{{ .Values.externalDatabase.farmDatabase }}{{- end -}}
{{- end -}}

{{- define "buildfarm.pulpDatabase" -}}
{{- if .Values.postgresql.enabled -}}{{ .Values.postgresql.pulpDatabase }}{{- else -}}{{ .Values.externalDatabase.pulpDatabase }}{{- end -}}
{{- end -}}

{{- define "buildfarm.databaseSslMode" -}}
{{- if .Values.postgresql.enabled -}}disable{{- else -}}{{ .Values.externalDatabase.sslMode }}{{- end -}}
{{- end -}}

{{/*
The CA that verifies an external database's certificate (externalDatabase.caSecret), mounted in
every pod that talks to the database; libpq (the farm's psycopg and Pulp's) reads PGSSLROOTCERT.
verify-ca and verify-full without it would fail every connection: refused at render time.
*/}}
{{- define "buildfarm.databaseCaPath" -}}/etc/buildfarm/database-ca/ca.crt{{- end -}}

{{- define "buildfarm.databaseCa" -}}
{{- if not .Values.postgresql.enabled -}}
{{- if and (has .Values.externalDatabase.sslMode (list "verify-ca" "verify-full")) (not .Values.externalDatabase.caSecret) -}}
{{- fail (printf "externalDatabase.sslMode %s verifies the server's certificate: set externalDatabase.caSecret to a Secret holding the CA (key externalDatabase.caKey)" .Values.externalDatabase.sslMode) -}}
{{- end -}}
{{- .Values.externalDatabase.caSecret -}}
{{- end -}}
{{- end -}}

{{- define "buildfarm.databaseCaEnv" -}}
{{- if include "buildfarm.databaseCa" . }}
- name: PGSSLROOTCERT
  value: {{ include "buildfarm.databaseCaPath" . }}
{{- end }}
{{- end -}}

{{- define "buildfarm.databaseCaVolumeMount" -}}
{{- if include "buildfarm.databaseCa" . }}
- name: database-ca
  mountPath: {{ include "buildfarm.databaseCaPath" . | dir }}
  readOnly: true
{{- end }}
{{- end -}}

{{- define "buildfarm.databaseCaVolume" -}}
{{- with include "buildfarm.databaseCa" . }}
- name: database-ca
  secret:
    secretName: {{ . }}
    items:
      - key: {{ $.Values.externalDatabase.caKey }}
        path: ca.crt
{{- end }}
{{- end -}}

{{/* Redis: host, port, db, and the Secret of its password (empty: none). */}}
{{- define "buildfarm.redisHost" -}}
{{- if .Values.redis.enabled -}}{{ include "buildfarm-lib.componentName" (dict "ctx" . "component" "redis") }}{{- else -}}{{ required "externalRedis.host is required when redis.enabled is false" .Values.externalRedis.host }}{{- end -}}
{{- end -}}

{{- define "buildfarm.redisSecret" -}}
{{- if .Values.redis.enabled -}}{{ default (include "buildfarm-lib.componentName" (dict "ctx" . "component" "redis")) .Values.redis.existingSecret }}{{- else -}}{{ .Values.externalRedis.existingSecret }}{{- end -}}
{{- end -}}

{{- define "buildfarm.redisSecretKey" -}}
{{- if .Values.redis.enabled -}}password{{- else -}}{{ .Values.externalRedis.passwordKey }}{{- end -}}
{{- end -}}

{{/* The broker URL; the password comes from $(REDIS_PASSWORD), set from the Secret just before. */}}
{{- define "buildfarm.redisUrl" -}}
{{- $port := ternary 6379 .Values.externalRedis.port .Values.redis.enabled -}}
{{- $db := ternary 0 .Values.externalRedis.database .Values.redis.enabled -}}
{{- if include "buildfarm.redisSecret" . -}}
redis://:$(REDIS_PASSWORD)@{{ include "buildfarm.redisHost" . }}:{{ $port }}/{{ $db }}
{{- else -}}
redis://{{ include "buildfarm.redisHost" . }}:{{ $port }}/{{ $db }}
{{- end -}}
{{- end -}}

{{/*
S3: endpoint URL and the Secret of its credentials. The in-cluster MinIO is named by its full
service name: builder pods in the builder namespace download sources and upload outputs through
URLs the farm presigns for this very host, so it must resolve there too (a bare name does not).
*/}}
{{- define "buildfarm.s3Endpoint" -}}
{{- if .Values.minio.enabled -}}
http://{{ include "buildfarm-lib.serviceFqdn" (dict "ctx" . "component" "minio") }}:9000
{{- else -}}
{{- required "s3.endpoint is required when minio.enabled is false (artifacts and logs need an S3 endpoint)" .Values.s3.endpoint -}}
{{- end -}}
{{- end -}}

{{- define "buildfarm.minioSecret" -}}
{{- default (include "buildfarm-lib.componentName" (dict "ctx" . "component" "minio")) .Values.minio.existingSecret -}}
{{- end -}}

{{/*
S3 credentials of one service (dict "ctx" $ "service" "farm"|"pulp"|"registry"): with MinIO each
service has its own user, limited by a policy to its own bucket (the minio-buckets Job makes them;
MinIO's root user is used by that Job only); s3.existingSecret replaces all three.
*/}}
{{- define "buildfarm.s3Secret" -}}
{{- if .ctx.Values.s3.existingSecret -}}{{ .ctx.Values.s3.existingSecret }}
{{- else if .ctx.Values.minio.enabled -}}{{ include "buildfarm-lib.componentName" (dict "ctx" .ctx "component" (printf "s3-%s" .service)) }}
{{- else -}}{{ required "s3.existingSecret is required when minio.enabled is false (credentials only through Secrets)" .ctx.Values.s3.existingSecret }}
{{- end -}}
{{- end -}}

{{- define "buildfarm.s3AccessKeyKey" -}}
{{- if .ctx.Values.s3.existingSecret -}}{{ .ctx.Values.s3.accessKeyKey }}{{- else -}}accessKey{{- end -}}
{{- end -}}

{{- define "buildfarm.s3SecretKeyKey" -}}
{{- if .ctx.Values.s3.existingSecret -}}{{ .ctx.Values.s3.secretKeyKey }}{{- else -}}secretKey{{- end -}}
{{- end -}}

{{/* The bucket each service's MinIO user may use. */}}
{{- define "buildfarm.s3ServiceBuckets" -}}
farm: {{ .Values.s3.buckets.artifacts }}
pulp: {{ .Values.s3.buckets.pulp }}
registry: {{ .Values.s3.buckets.registry }}
{{- end -}}

{{/* One service's generated MinIO user: (dict "ctx" $ "service" "pulp"). */}}
{{- define "buildfarm.s3ServiceSecret" -}}
{{- $ctx := .ctx -}}
{{- if and $ctx.Values.minio.enabled (not $ctx.Values.s3.existingSecret) }}
{{- $name := include "buildfarm.s3Secret" . -}}
apiVersion: v1
kind: Secret
metadata:
  {{- include "buildfarm-lib.metadata" (dict "ctx" $ctx "component" (printf "s3-%s" .service)) | nindent 2 }}
  annotations:
    helm.sh/resource-policy: keep
type: Opaque
data:
  # A MinIO user of its own (the minio-buckets Job creates it, limited to its bucket).
  accessKey: {{ printf "%s-%s" (include "buildfarm-lib.fullname" $ctx) .service | trunc 20 | trimSuffix "-" | b64enc }}
  secretKey: {{ include "buildfarm-lib.stableSecretValue" (dict "ctx" $ctx "secret" $name "key" "secretKey" "length" 40) }}
{{- end }}
{{- end -}}

{{/* Pulp: service URLs (full names: builder pods read the content app from their own namespace) and the Secret of the admin password. */}}
{{- define "buildfarm.pulpApiUrl" -}}
http://{{ include "buildfarm-lib.serviceFqdn" (dict "ctx" . "component" "pulp-api") }}:24817
{{- end -}}

{{- define "buildfarm.pulpContentOrigin" -}}
{{- default (printf "http://%s:%v" (include "buildfarm-lib.serviceFqdn" (dict "ctx" . "component" "pulp-content")) .Values.pulp.content.service.port) .Values.pulp.contentOrigin -}}
{{- end -}}

{{- define "buildfarm.pulpAdminSecret" -}}
{{- default (include "buildfarm-lib.componentName" (dict "ctx" . "component" "pulp-admin")) .Values.pulp.existingSecret -}}
{{- end -}}

{{/* The registry's URL, by its full service name (builder pods push to it from their namespace). */}}
{{- define "buildfarm.registryUrl" -}}
http://{{ include "buildfarm-lib.serviceFqdn" (dict "ctx" . "component" "registry") }}:{{ .Values.registry.service.port }}
{{- end -}}

{{/*
The package-builder image of builder pods: builders.packageImage, or by default the tag
`buildfarm env image` pushes to the farm's registry and moves (the runner resolves it to its
digest at submit, so a new environment is a new input key).
*/}}
{{- define "buildfarm.packageImage" -}}
{{- $image := .Values.builders.packageImage -}}
{{- if $image.repository -}}
{{- include "buildfarm-lib.image" (dict "image" $image "default" .Chart.AppVersion) -}}
{{- else if .Values.registry.enabled -}}
{{- $repository := printf "%s/buildfarm/package-builder" (include "buildfarm.registryUrl" . | trimPrefix "http://") -}}
{{- include "buildfarm-lib.image" (dict "image" (merge (dict "repository" $repository) $image) "default" "current") -}}
{{- else -}}
{{- fail "builders.packageImage.repository is required when registry.enabled is false (the default image is on the farm's registry)" -}}
{{- end -}}
{{- end -}}

{{/* The Secret of the registry's push account (username, password, htpasswd). */}}
{{- define "buildfarm.registryAuthSecret" -}}
{{- default (include "buildfarm-lib.componentName" (dict "ctx" . "component" "registry-auth")) .Values.registry.auth.existingSecret -}}
{{- end -}}

{{/* The dockerconfigjson Secret builder pods push with, in the builder namespace. */}}
{{- define "buildfarm.registryPushSecret" -}}
{{- default (include "buildfarm-lib.componentName" (dict "ctx" . "component" "registry-push")) .Values.builders.registryPushSecret.existingSecret -}}
{{- end -}}

{{- define "buildfarm.adminTokenSecret" -}}
{{- include "buildfarm-lib.componentName" (dict "ctx" . "component" "admin-token") -}}
{{- end -}}

{{/* Environment of every farm process: the non-secret settings come from the ConfigMap, secrets from Secrets. */}}
{{- define "buildfarm.farmEnv" -}}
envFrom:
  - configMapRef:
      name: {{ include "buildfarm-lib.componentName" (dict "ctx" . "component" "farm-config") }}
env:
  # libpq reads PGPASSWORD, so the database URL in the ConfigMap carries no password.
  - name: PGPASSWORD
    valueFrom:
      secretKeyRef:
        name: {{ include "buildfarm.databaseSecret" . }}
        key: {{ include "buildfarm.databaseSecretKey" . }}
  {{- include "buildfarm.databaseCaEnv" . | nindent 2 }}
  {{- if include "buildfarm.redisSecret" . }}
  - name: REDIS_PASSWORD
    valueFrom:
      secretKeyRef:
        name: {{ include "buildfarm.redisSecret" . }}
        key: {{ include "buildfarm.redisSecretKey" . }}
  {{- end }}
  - name: BUILDFARM_REDIS_URL
    value: {{ include "buildfarm.redisUrl" . | quote }}
  - name: BUILDFARM_S3_ACCESS_KEY
    valueFrom:
      secretKeyRef:
        name: {{ include "buildfarm.s3Secret" (dict "ctx" . "service" "farm") }}
        key: {{ include "buildfarm.s3AccessKeyKey" (dict "ctx" . "service" "farm") }}
  - name: BUILDFARM_S3_SECRET_KEY
    valueFrom:
      secretKeyRef:
        name: {{ include "buildfarm.s3Secret" (dict "ctx" . "service" "farm") }}
        key: {{ include "buildfarm.s3SecretKeyKey" (dict "ctx" . "service" "farm") }}
  - name: BUILDFARM_PULP_PASSWORD
    valueFrom:
      secretKeyRef:
        name: {{ include "buildfarm.pulpAdminSecret" . }}
        key: password
  {{- if and .Values.registry.enabled .Values.registry.auth.enabled }}
  - name: BUILDFARM_REGISTRY_USERNAME
    valueFrom:
      secretKeyRef:
        name: {{ include "buildfarm.registryAuthSecret" . }}
        key: username
  - name: BUILDFARM_REGISTRY_PASSWORD
    valueFrom:
      secretKeyRef:
        name: {{ include "buildfarm.registryAuthSecret" . }}
        key: password
  {{- end }}
  {{- with .Values.farm.backup.existingSecret }}
  - name: BUILDFARM_BACKUP_S3_ACCESS_KEY
    valueFrom:
      secretKeyRef:
        name: {{ . }}
        key: {{ $.Values.farm.backup.accessKeyKey }}
  - name: BUILDFARM_BACKUP_S3_SECRET_KEY
    valueFrom:
      secretKeyRef:
        name: {{ . }}
        key: {{ $.Values.farm.backup.secretKeyKey }}
  {{- end }}
{{- end -}}

{{/* The farm container's common part: image, security context, environment, writable dirs. */}}
{{- define "buildfarm.farmContainer" -}}
image: {{ include "buildfarm-lib.image" (dict "image" .Values.image "default" .Chart.AppVersion) }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
securityContext:
  {{- include "buildfarm-lib.containerSecurityContext" . | nindent 2 }}
{{ include "buildfarm.farmEnv" . }}
{{- end -}}

{{/*
The init container of every long-running farm pod (files/wait_ready.py): waits, bounded, until
the database's schema is the revision this image expects and the artifact bucket exists. The
bootstrap Job (migrations) and the minio-buckets Job are ordinary resources created with the
Deployments, not hooks, so `helm install --wait`, Argo CD and Flux see one set of resources that
becomes ready by itself; on upgrade a new pod starts only once the new schema is in place.
*/}}
{{- define "buildfarm.farmWaitContainer" -}}
- name: wait-ready
  {{- include "buildfarm.farmContainer" . | nindent 2 }}
  command: ["python", "-c", {{ .Files.Get "files/wait_ready.py" | quote }}, "600"]
  resources:
    requests: {cpu: 10m, memory: 64Mi}
    limits: {cpu: 500m, memory: 256Mi}
  volumeMounts:
    {{- include "buildfarm.farmVolumeMounts" . | nindent 4 }}
{{- end -}}

{{/*
The name of a Job that is an ordinary resource of the release: <component>-<hash of what it runs>.
A Job's pod template is immutable, so a Job whose image or settings change must be a new Job
(the old one is pruned); an unchanged Job keeps its name and is not run again.
Called as (dict "ctx" $ "component" "bootstrap" "inputs" (list ...)).
*/}}
{{- define "buildfarm.jobName" -}}
{{- printf "%s-%s" (include "buildfarm-lib.componentName" .) (toJson .inputs | sha256sum | trunc 8) -}}
{{- end -}}

{{- define "buildfarm.farmVolumeMounts" -}}
{{ include "buildfarm-lib.tmpVolumeMount" . }}
- name: state
  mountPath: /var/lib/buildfarm
{{- include "buildfarm.databaseCaVolumeMount" . }}
{{- end -}}

{{/*
Bytes the farm's work directory (/var/lib/buildfarm) of one pod must hold, from the very settings
the farm enforces (farm.* below are also BUILDFARM_* in the ConfigMap), plus farm.workVolume.marginBytes:
- api: one upload being received (apiMaxUploadBytes) and unpacked for checking (apiMaxUnpackedBytes);
- worker: per concurrent step, the outputs archive (builderMaxOutputsBytes) and its unpacked files;
- scheduler: one step's outputs the same way (it publishes them);
- anything else (bootstrap, reaper): the margin.
Called as (dict "ctx" $ "role" "api").
*/}}
{{- define "buildfarm.workBytes" -}}
{{- $farm := .ctx.Values.farm -}}
{{- $need := 0 -}}
{{- if eq .role "api" -}}
{{- $need = add (int64 $farm.apiMaxUploadBytes) (int64 $farm.apiMaxUnpackedBytes) -}}
{{- else if eq .role "worker" -}}
{{- $need = mul (int64 .ctx.Values.worker.concurrency) 2 (int64 $farm.builderMaxOutputsBytes) -}}
{{- else if eq .role "scheduler" -}}
{{- $need = mul 2 (int64 $farm.builderMaxOutputsBytes) -}}
{{- end -}}
{{- add $need (int64 $farm.workVolume.marginBytes) -}}
{{- end -}}

{{/* The pod's volumes: (dict "ctx" $ "role" "api"); the work directory sized by buildfarm.workBytes,
     an emptyDir or (farm.workVolume.storageClassName) a generic ephemeral volume of that class. */}}
{{- define "buildfarm.farmVolumes" -}}
{{- $bytes := include "buildfarm.workBytes" . -}}
{{ include "buildfarm-lib.tmpVolume" (dict) }}
- name: state
  {{- with .ctx.Values.farm.workVolume.storageClassName }}
  ephemeral:
    volumeClaimTemplate:
      spec:
        accessModes: ["ReadWriteOnce"]
        storageClassName: {{ . }}
        resources:
          requests:
            storage: {{ $bytes }}
  {{- else }}
  emptyDir:
    sizeLimit: {{ $bytes }}
  {{- end }}
{{- include "buildfarm.databaseCaVolume" .ctx }}
{{- end -}}

{{/*
What a chart user adds to any component (its values: nodeSelector, tolerations, affinity,
topologySpreadConstraints, extraEnvVars, extraVolumes, extraVolumeMounts): the pod-level part.
*/}}
{{- define "buildfarm.podPlacement" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The account of every pod that never calls the Kubernetes API (serviceAccount.*). */}}
{{- define "buildfarm.controlServiceAccount" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "buildfarm-lib.componentName" (dict "ctx" . "component" "control")) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.create is false: name the existing ServiceAccount in serviceAccount.name" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* serviceAccount.annotations (cloud IAM, e.g. S3 access) on the accounts of the farm's own pods. */}}
{{- define "buildfarm.serviceAccountAnnotations" -}}
{{- with .Values.serviceAccount.annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The uid the farm image runs as (buildtools/images/farm/Dockerfile). */}}
{{- define "buildfarm.farmUid" -}}10001{{- end -}}

{{/* Checksum of the farm ConfigMap, so a settings change rolls the pods. */}}
{{- define "buildfarm.configChecksum" -}}
checksum/farm-config: {{ include (print .Template.BasePath "/farm/farm-configmap.yaml") . | sha256sum }}
{{- end -}}

{{/*
checkov skips, each with its reason, written once here. Called with a list of check ids;
renders `checkov.io/skipN: ID=reason` annotations.
*/}}
{{- define "buildfarm.checkovReasons" -}}
CKV_K8S_43: image digests are an optional value (image.digest); tags are pinned release versions and latest is refused
CKV_K8S_15: images are pinned release tags (or digests) that are never rebuilt, so IfNotPresent pulls the same bytes
CKV_K8S_35: these upstream programs read credentials from environment variables; the values come from Secrets, never from plain values
CKV_K8S_40: the upstream image runs as its own fixed low uid (non-root); remapping it would break its file ownership
CKV_K8S_38: this pod talks to the Kubernetes API (builder Jobs, the admin token Secret or the sysbox check) with a least-privilege ServiceAccount
CKV_K8S_8: a Job or test pod runs to completion; a liveness probe has nothing to watch
CKV_K8S_9: a Job or test pod serves nothing; a readiness probe has nothing to gate
{{- end -}}

{{- define "buildfarm.checkovSkips" -}}
{{- $reasons := include "buildfarm.checkovReasons" . | fromYaml -}}
{{- range $i, $id := .ids }}
checkov.io/skip{{ add1 $i }}: {{ printf "%s=%s" $id (required (printf "no reason written for checkov skip %s" $id) (index $reasons $id)) | quote }}
{{- end }}
{{- end -}}

{{/*
farm.mirrors as the JSON list BUILDFARM_MIRRORS holds (model/settinggroups.py MirrorConfig):
the same keys, signedBy spelt signed_by, defaults as the farm's.
*/}}
{{- define "buildfarm.mirrorsJson" -}}
{{- $mirrors := list -}}
{{- range .Values.farm.mirrors -}}
{{- $mirror := dict "name" .name "url" .url "distribution" .distribution "components" (.components | default (list "main")) "architectures" (.architectures | default (list "amd64")) -}}
{{- with .signedBy }}{{ $_ := set $mirror "signed_by" . }}{{ end -}}
{{- $mirrors = append $mirrors $mirror -}}
{{- end -}}
{{- toJson $mirrors -}}
{{- end -}}
