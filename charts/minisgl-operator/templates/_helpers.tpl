{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "minisgl-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: release-chart unless the release name already holds the chart name. */}}
{{- define "minisgl-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "minisgl-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object of the release. */}}
{{- define "minisgl-operator.labels" -}}
helm.sh/chart: {{ include "minisgl-operator.chart" . }}
{{ include "minisgl-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: minisgl
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that select the operator pod; never change them after install (Deployment selectors are immutable). */}}
{{- define "minisgl-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "minisgl-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "minisgl-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "minisgl-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "minisgl-operator.image" -}}
{{- $tag := default .Chart.AppVersion .Values.operator.image.tag }}
{{- if .Values.operator.image.digest }}
{{- printf "%s@%s" .Values.operator.image.repository .Values.operator.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.operator.image.repository $tag }}
{{- end }}
{{- end }}

{{- define "minisgl-operator.workerImage" -}}
{{- printf "%s:%s" .Values.workers.image.repository (default .Chart.AppVersion .Values.workers.image.tag) }}
{{- end }}

{{/*
Namespaces the operator watches: an empty list means the whole cluster.
In "namespaces" mode with no list given, the release namespace.
*/}}
{{- define "minisgl-operator.watchNamespaces" -}}
{{- if eq .Values.watch.scope "namespaces" }}
{{- $namespaces := .Values.watch.namespaces | default (list .Release.Namespace) }}
{{- toJson (uniq $namespaces) }}
{{- else }}
{{- toJson (list) }}
{{- end }}
{{- end }}

{{/* The namespace that dashboards' ConfigMaps go to (Grafana's sidecar may watch only one). */}}
{{- define "minisgl-operator.dashboardsNamespace" -}}
{{- default .Release.Namespace .Values.dashboards.namespace }}
{{- end }}

{{/*
The operator's RBAC rules (files/rbac.yaml, a copy of operator/minisgl_operator/rbac.yaml kept identical
by a test), split by the scope of their resources. Call with (dict "ctx" $ "clusterScoped" true|false);
renders a YAML list of PolicyRules, or nothing when no rule falls in that scope.
Cluster-scoped resources (CRDs, namespaces, nodes, ...) only work through a ClusterRole,
so they stay in one even when the operator watches single namespaces.
*/}}
{{- define "minisgl-operator.rules" -}}
{{- $clusterResources := list "customresourcedefinitions" "namespaces" "nodes" "clusterkopfpeerings" "persistentvolumes" "storageclasses" "priorityclasses" "runtimeclasses" "clusterroles" "clusterrolebindings" }}
{{- $rules := list }}
{{- range $rule := (.ctx.Files.Get "files/rbac.yaml" | fromYamlArray) }}
{{- $kept := list }}
{{- range (.resources | default list) }}
{{- $base := (split "/" .)._0 }}
{{- $podRead := and (eq $base "pods") $.ctx.Values.rbac.readPodsClusterWide (not (without $rule.verbs "get" "list" "watch")) }}
{{- if or (eq (has $base $clusterResources) $.clusterScoped) (and $.clusterScoped $podRead) }}
{{- $kept = append $kept . }}
{{- end }}
{{- end }}
{{- if $kept }}
{{- $rules = append $rules (set (deepCopy .) "resources" $kept) }}
{{- else if and .nonResourceURLs $.clusterScoped }}
{{- $rules = append $rules . }}
{{- end }}
{{- end }}
{{- if $rules }}
{{- toYaml $rules }}
{{- end }}
{{- end }}

{{/* All rules, for the cluster-wide watch. */}}
{{- define "minisgl-operator.allRules" -}}
{{- toYaml (.Files.Get "files/rbac.yaml" | fromYamlArray) }}
{{- end }}
