{{/*
Labels as upstream's kube-flannel.yml: the DaemonSet selector is {app: flannel} and is immutable, so
these must never change or a `kubectl apply` over a Go flannel install is rejected.
*/}}
{{- define "pyflannel.podLabels" -}}
tier: node
app: flannel
{{- end }}

{{- define "pyflannel.labels" -}}
tier: node
app: flannel
k8s-app: flannel
{{- end }}

{{/* The netpol enforcer in use: "" (none), "native" or "kube-network-policies". */}}
{{- define "pyflannel.netpol" -}}
{{- if .Values.netpol.enabled }}{{ .Values.netpol.implementation }}{{ end }}
{{- end }}

{{/* A number as an integer: values files decode numbers as floats, which print as 1e+06. */}}
{{- define "pyflannel.int" -}}
{{- int64 . }}
{{- end }}
