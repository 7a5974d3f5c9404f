{{/*
The volume of a directory backup target, in the pods where `buildfarm backup` runs: the scheduler
(the scheduled `backup run`) and the API (operators exec `backup verify` and `backup restore`
there). farm.backup.existingClaim is mounted at farm.backup.target; workers never touch backups,
so a ReadWriteOnce claim does for a one-node farm. Nothing is mounted without a claim.
*/}}
{{- define "buildfarm.backupVolumeMounts" -}}
{{- if .Values.farm.backup.existingClaim }}
- name: backup
  mountPath: {{ .Values.farm.backup.target }}
{{- end }}
{{- end -}}

{{- define "buildfarm.backupVolumes" -}}
{{- with .Values.farm.backup.existingClaim }}
{{- if not (hasPrefix "/" $.Values.farm.backup.target) }}
{{- fail "farm.backup.existingClaim is mounted at farm.backup.target: set farm.backup.target to an absolute directory" }}
{{- end }}
- name: backup
  persistentVolumeClaim:
    claimName: {{ . }}
{{- end }}
{{- end -}}
