{{/*
The worker pod, shared by the DaemonSet and the Deployment. A worker's node name is the
Kubernetes node it runs on (DaemonSet) or its pod name (Deployment), so `node.<name>` queues
stay distinct.
*/}}
{{- define "buildfarm.workerPodTemplate" -}}
metadata:
  labels:
    {{- include "buildfarm-lib.labels" (dict "ctx" . "component" "worker") | nindent 4 }}
  annotations:
    {{- include "buildfarm.configChecksum" . | nindent 4 }}
    {{- with .Values.worker.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  # The worker creates and watches builder Jobs in the builder namespace: it needs its token.
  serviceAccountName: {{ include "buildfarm-lib.componentName" (dict "ctx" . "component" "worker") }}
  automountServiceAccountToken: true
  # no <SERVICE>_PORT variables: the farm's Services are buildfarm-*, and a farm process refuses
  # BUILDFARM_* variables that are no setting (model/settings.py)
  enableServiceLinks: false
  {{- include "buildfarm-lib.imagePullSecrets" . | nindent 2 }}
  securityContext:
    {{- include "buildfarm-lib.podSecurityContext" (dict "uid" (include "buildfarm.farmUid" .)) | nindent 4 }}
  # A running step must be able to hand its lease back before the pod goes.
  terminationGracePeriodSeconds: 60
  initContainers:
    {{- include "buildfarm.farmWaitContainer" . | nindent 4 }}
  containers:
    - name: worker
      {{- include "buildfarm.farmContainer" . | nindent 6 }}
        - name: BUILDFARM_NODE
          valueFrom:
            fieldRef:
              fieldPath: {{ ternary "spec.nodeName" "metadata.name" (eq .Values.worker.kind "DaemonSet") }}
        {{- with .Values.worker.nodeLabels }}
        - name: BUILDFARM_NODE_LABELS
          value: {{ join "," . | quote }}
        {{- end }}
        {{- with .Values.worker.extraEnvVars }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      command:
        - celery
        - -A
        - buildfarm.dispatch.worker:app
        - worker
        - -n
        - $(BUILDFARM_NODE)@%h
        - -Q
        - builds,node.$(BUILDFARM_NODE)
        - --pool
        - threads
        - -c
        - {{ .Values.worker.concurrency | quote }}
        - --without-gossip
        - --without-mingle
      ports:
        - name: metrics
          containerPort: {{ .Values.metrics.workerPort }}
          protocol: TCP
      livenessProbe:
        exec:
          command: ["sh", "-c", "celery -A buildfarm.dispatch.worker:app inspect ping -d \"$BUILDFARM_NODE@$HOSTNAME\" --timeout 10"]
        initialDelaySeconds: 30
        periodSeconds: 120
        timeoutSeconds: 30
        failureThreshold: 3
      readinessProbe:
        exec:
          command: ["sh", "-c", "celery -A buildfarm.dispatch.worker:app inspect ping -d \"$BUILDFARM_NODE@$HOSTNAME\" --timeout 10"]
        initialDelaySeconds: 10
        periodSeconds: 60
        timeoutSeconds: 30
      resources:
        {{- toYaml .Values.worker.resources | nindent 8 }}
      volumeMounts:
        {{- include "buildfarm.farmVolumeMounts" . | nindent 8 }}
        {{- with .Values.worker.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    {{- include "buildfarm.farmVolumes" (dict "ctx" . "role" "worker") | nindent 4 }}
    {{- with .Values.worker.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- /* build nodes are chosen by buildNodeSelector */}}
  {{- include "buildfarm.podPlacement" (merge (dict "nodeSelector" .Values.worker.buildNodeSelector) (omit .Values.worker "nodeSelector")) | nindent 2 }}
{{- end -}}
