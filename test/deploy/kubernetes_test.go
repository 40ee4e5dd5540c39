package deploy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func TestKubernetesManifests(t *testing.T) {
	t.Parallel()
	settings, err := readAgentSettings(configSource)
	if err != nil {
		t.Fatal(err)
	}
	m, err := loadKustomization(kubernetesDir)
	if err != nil {
		t.Fatalf("load %s: %v", kubernetesDir, err)
	}
	for _, err := range m.check(settings) {
		t.Error(err)
	}
	// What the README's commands rely on, beyond what check asks of any deployment.
	s := m.statefulSet
	if s.Name != "timerd" || *s.Spec.Replicas != 3 {
		t.Errorf("StatefulSet %s with %d replicas: README.md deploys timerd with 3", s.Name, *s.Spec.Replicas)
	}
	for _, v := range s.Spec.Template.Spec.Volumes {
		if v.Secret != nil && (v.Secret.DefaultMode == nil || *v.Secret.DefaultMode != 0o440) {
			t.Errorf("volume %s: defaultMode %v, want 0440 (the group fsGroup reads it, nobody else)", v.Name, v.Secret.DefaultMode)
		}
	}
}

// TestManifestChecksCatchMistakes breaks the manifests one way at a time: each
// mistake must be reported, in words that say what is wrong.
func TestManifestChecksCatchMistakes(t *testing.T) {
	t.Parallel()
	settings, err := readAgentSettings(configSource)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := loadKustomization(kubernetesDir)
	if err != nil {
		t.Fatal(err)
	}
	container := func(m *manifests) *corev1.Container { return &m.statefulSet.Spec.Template.Spec.Containers[0] }
	setEnv := func(m *manifests, name, value string) {
		c := container(m)
		for i := range c.Env {
			if c.Env[i].Name == name {
				c.Env[i] = corev1.EnvVar{Name: name, Value: value}
				return
			}
		}
		c.Env = append(c.Env, corev1.EnvVar{Name: name, Value: value})
	}
	dropEnv := func(m *manifests, name string) {
		c := container(m)
		for i := range c.Env {
			if c.Env[i].Name == name {
				c.Env = append(c.Env[:i], c.Env[i+1:]...)
				return
			}
		}
		t.Fatalf("no env %s to drop", name)
	}
	mount := func(m *manifests, name string) *corev1.VolumeMount {
		c := container(m)
		for i := range c.VolumeMounts {
			if c.VolumeMounts[i].Name == name {
				return &c.VolumeMounts[i]
			}
		}
		t.Fatalf("no volumeMount %s", name)
		return nil
	}
	service := func(m *manifests, name string) *corev1.Service {
		for _, s := range m.services {
			if s.Name == name {
				return s
			}
		}
		t.Fatalf("no Service %s", name)
		return nil
	}
	i64 := func(v int64) *int64 { return &v }
	i32 := func(v int32) *int32 { return &v }

	for _, tc := range []struct {
		name    string
		breakIt func(m *manifests)
		want    string
	}{
		{"an env timerd does not read", func(m *manifests) { setEnv(m, "TIMERD_EXPECTED", "3") }, "env TIMERD_EXPECTED: not a setting"},
		{"a retired setting", func(m *manifests) { setEnv(m, "TIMERD_SETTLE_DELAY", "5s") }, "env TIMERD_SETTLE_DELAY: a retired setting"},
		{"a deprecated setting", func(m *manifests) { setEnv(m, "TIMERD_WORKERS", "8") }, "env TIMERD_WORKERS: a deprecated setting"},
		{"a setting twice", func(m *manifests) {
			container(m).Env = append(container(m).Env, corev1.EnvVar{Name: "TIMERD_EXPECT", Value: "3"})
		}, "env TIMERD_EXPECT: set twice"},
		{"envFrom", func(m *manifests) {
			container(m).EnvFrom = []corev1.EnvFromSource{{ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "x"}}}}
		}, "envFrom"},
		{"a gossip key in the manifest", func(m *manifests) {
			dropEnv(m, "TIMERD_GOSSIP_KEYRING_FILE")
			setEnv(m, "TIMERD_GOSSIP_KEY", "c2VjcmV0c2VjcmV0c2VjcmV0")
		}, "env TIMERD_GOSSIP_KEY: a secret"},
		{"a broker password in the manifest", func(m *manifests) { setEnv(m, "ATTUNE_MQ_URL", "amqp://timerd:hunter2@rabbitmq/") }, "ATTUNE_MQ_URL: a URL with credentials"},
		{"no gossip key", func(m *manifests) { dropEnv(m, "TIMERD_GOSSIP_KEYRING_FILE") }, "refuses to gossip without a key"},
		{"no token", func(m *manifests) { dropEnv(m, "ATTUNE_API_TOKEN_FILE") }, "env ATTUNE_API_TOKEN_FILE: required"},
		{"no data dir", func(m *manifests) { dropEnv(m, "TIMERD_DATA_DIR") }, "env TIMERD_DATA_DIR: required"},
		{"the data dir off the volume", func(m *manifests) { setEnv(m, "TIMERD_DATA_DIR", "/var/lib/timerdx") }, "not on the volume"},
		{"the advertise address a value", func(m *manifests) { setEnv(m, "TIMERD_ADVERTISE_ADDR", "10.0.0.1") }, "TIMERD_ADVERTISE_ADDR: want valueFrom.fieldRef status.podIP"},
		{"the node name from the host", func(m *manifests) { dropEnv(m, "TIMERD_NODE_NAME") }, "TIMERD_NODE_NAME: want valueFrom.fieldRef metadata.name"},
		{"join not the headless service", func(m *manifests) { setEnv(m, "TIMERD_JOIN", "timerd") }, `TIMERD_JOIN "timerd": want the headless Service`},
		{"join on another port", func(m *manifests) { setEnv(m, "TIMERD_JOIN", "timerd-peers:7000") }, `TIMERD_JOIN "timerd-peers:7000"`},
		{"expect below the replicas", func(m *manifests) { setEnv(m, "TIMERD_EXPECT", "2") }, `TIMERD_EXPECT "2": want 3`},
		{"expect unset", func(m *manifests) { dropEnv(m, "TIMERD_EXPECT") }, `TIMERD_EXPECT "1": want 3`},
		{"replicas changed alone", func(m *manifests) { m.statefulSet.Spec.Replicas = i32(5) }, `TIMERD_EXPECT "3": want 5`},
		{"ordered pod management", func(m *manifests) { m.statefulSet.Spec.PodManagementPolicy = appsv1.OrderedReadyPodManagement }, "want Parallel"},
		{"OnDelete updates", func(m *manifests) {
			m.statefulSet.Spec.UpdateStrategy = appsv1.StatefulSetUpdateStrategy{Type: appsv1.OnDeleteStatefulSetStrategyType}
		}, "OnDelete"},
		{"grace period of twice the shutdown timeout only", func(m *manifests) { m.statefulSet.Spec.Template.Spec.TerminationGracePeriodSeconds = i64(20) }, "terminationGracePeriodSeconds 20s: want more than 45s"},
		{"grace period unset", func(m *manifests) { m.statefulSet.Spec.Template.Spec.TerminationGracePeriodSeconds = nil }, "terminationGracePeriodSeconds unset"},
		{"shutdown timeout raised alone", func(m *manifests) { setEnv(m, "TIMERD_SHUTDOWN_TIMEOUT", "30s") }, "want more than 1m45s"},
		{"shutdown timeout in days", func(m *manifests) { setEnv(m, "TIMERD_SHUTDOWN_TIMEOUT", "1d") }, "env TIMERD_SHUTDOWN_TIMEOUT"},
		{"HTTP on another port", func(m *manifests) { setEnv(m, "TIMERD_HTTP_ADDR", ":9000") }, "containerPort 8470/TCP (http): timerd listens on 9000/TCP"},
		{"gossip UDP missing", func(m *manifests) {
			c := container(m)
			c.Ports = c.Ports[:2]
		}, "gossip UDP false"},
		{"a port timerd does not open", func(m *manifests) {
			container(m).Ports = append(container(m).Ports, corev1.ContainerPort{Name: "pprof", ContainerPort: 6060})
		}, "containerPort 6060/TCP (pprof)"},
		{"liveness on /readyz", func(m *manifests) { container(m).LivenessProbe.HTTPGet.Path = "/readyz" }, `livenessProbe: path "/readyz", want /healthz`},
		{"readiness on /healthz", func(m *manifests) { container(m).ReadinessProbe.HTTPGet.Path = "/healthz" }, `readinessProbe: path "/healthz", want /readyz`},
		{"probe on the gossip port", func(m *manifests) { container(m).ReadinessProbe.HTTPGet.Port = intstr.FromString("gossip-tcp") }, "readinessProbe: port gossip-tcp is not the HTTP port"},
		{"probe on an unnamed port", func(m *manifests) { container(m).LivenessProbe.HTTPGet.Port = intstr.FromString("metrics") }, "livenessProbe: port metrics"},
		{"no liveness", func(m *manifests) { container(m).LivenessProbe = nil }, "livenessProbe: missing"},
		{"a Service to a wrong port", func(m *manifests) { service(m, "timerd").Spec.Ports[0].TargetPort = intstr.FromInt32(8080) }, "Service timerd port http: targetPort 8080/TCP"},
		{"a Service port UDP to the HTTP port", func(m *manifests) { service(m, "timerd").Spec.Ports[0].Protocol = corev1.ProtocolUDP }, "Service timerd port http: targetPort http/UDP"},
		{"a Service selecting no pod", func(m *manifests) { service(m, "timerd").Spec.Selector = map[string]string{"app": "x"} }, "Service timerd: its selector"},
		{"headless with a cluster IP", func(m *manifests) { service(m, "timerd-peers").Spec.ClusterIP = "" }, `clusterIP "", want None`},
		{"headless hiding starting pods", func(m *manifests) { service(m, "timerd-peers").Spec.PublishNotReadyAddresses = false }, "publishNotReadyAddresses false"},
		{"serviceName naming no Service", func(m *manifests) { m.statefulSet.Spec.ServiceName = "peers" }, `serviceName "peers" names no Service`},
		{"a PDB of two", func(m *manifests) { v := intstr.FromInt32(2); m.pdb.Spec.MaxUnavailable = &v }, "want maxUnavailable 1"},
		{"a PDB in percent", func(m *manifests) { v := intstr.FromString("34%"); m.pdb.Spec.MaxUnavailable = &v }, "want maxUnavailable 1"},
		{"a PDB of other pods", func(m *manifests) { m.pdb.Spec.Selector.MatchLabels = map[string]string{"app": "x"} }, "PodDisruptionBudget timerd: its selector"},
		{"a ServiceMonitor over both Services", func(m *manifests) {
			delete(m.monitor.Spec.Selector.MatchLabels, "app.kubernetes.io/component")
		}, "selects 2 Services, want one"},
		{"a ServiceMonitor on a port the Service lacks", func(m *manifests) { m.monitor.Spec.Endpoints[0].Port = "metrics" }, `endpoint port "metrics"`},
		{"a ServiceMonitor on another path", func(m *manifests) { m.monitor.Spec.Endpoints[0].Path = "/v1/status" }, `path "/v1/status"`},
		{"a secret mounted by subPath", func(m *manifests) {
			vm := mount(m, "attune")
			vm.MountPath, vm.SubPath = "/etc/timerd/attune/token", "token"
		}, "subPath: the kubelet never updates it"},
		{"a secret mounted writable", func(m *manifests) { mount(m, "gossip").ReadOnly = false }, "mount a Secret readOnly"},
		{"a token file off the secret", func(m *manifests) { setEnv(m, "ATTUNE_API_TOKEN_FILE", "/etc/timerd/token") }, `ATTUNE_API_TOKEN_FILE "/etc/timerd/token": not a file of a Secret`},
		{"a token file the items leave out", func(m *manifests) { setEnv(m, "ATTUNE_API_TOKEN_FILE", "/etc/timerd/attune/mq-url") }, `projects no item "mq-url"`},
		{"a data volume that is not claimed", func(m *manifests) { m.statefulSet.Spec.VolumeClaimTemplates = nil }, "want a volumeClaimTemplate mounted at /var/lib/timerd"},
		{"root", func(m *manifests) {
			m.statefulSet.Spec.Template.Spec.SecurityContext.RunAsUser = i64(0)
			m.statefulSet.Spec.Template.Spec.SecurityContext.RunAsNonRoot = nil
		}, "want runAsNonRoot true"},
		{"a writable root", func(m *manifests) { container(m).SecurityContext.ReadOnlyRootFilesystem = nil }, "readOnlyRootFilesystem"},
		{"no memory limit", func(m *manifests) { container(m).Resources.Limits = nil }, "memory limit"},
		{"a port name too long", func(m *manifests) { container(m).Ports[1].Name = "gossip-tcp-port1" }, `containerPort name "gossip-tcp-port1"`},
		{"a port name twice", func(m *manifests) { container(m).Ports[2].Name = "gossip-tcp" }, `containerPort name "gossip-tcp" twice`},
		{"an env name the API refuses", func(m *manifests) { container(m).Env[0].Name = "ATTUNE API URL" }, `env name "ATTUNE API URL"`},
		{"a Service name the API refuses", func(m *manifests) { service(m, "timerd").Name = "Timerd" }, `Service name "Timerd"`},
		{"an unnamed port among several", func(m *manifests) { service(m, "timerd-peers").Spec.Ports[2].Name = "" }, `Service timerd-peers port name ""`},
		{"a label value the API refuses", func(m *manifests) { m.statefulSet.Labels["app.kubernetes.io/name"] = "timer d" }, `StatefulSet timerd labels`},
		{"a mount of no volume", func(m *manifests) { mount(m, "http").Name = "https" }, "volumeMount https: no volume"},
		{"a mode out of range", func(m *manifests) {
			v := int32(0o1440)
			m.statefulSet.Spec.Template.Spec.Volumes[0].Secret.DefaultMode = &v
		}, "defaultMode 800 is not a file mode"},
		{"an image kustomize does not rename", func(m *manifests) { container(m).Image = "ghcr.io/x/timerd:1.0" }, `image "ghcr.io/x/timerd:1.0"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := loaded.deepCopy()
			tc.breakIt(m)
			errs := m.check(settings)
			for _, err := range errs {
				if strings.Contains(err.Error(), tc.want) {
					return
				}
			}
			t.Errorf("no error says %q; got %v", tc.want, errs)
		})
	}
}

// TestManifestsDecodeStrictly edits a copy of the files: a field the API does not
// have, a key twice, a file the kustomization misses or lists in vain all fail the load.
func TestManifestsDecodeStrictly(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		edit func(t *testing.T, dir string)
		want string
	}{
		{"a misspelt field", func(t *testing.T, dir string) {
			replaceIn(t, dir, "statefulset.yaml", "  podManagementPolicy: Parallel", "  podManagementPolicy: Parallel\n  podManagement: Parallel")
		}, `unknown field "podManagement"`},
		{"a field at the wrong level", func(t *testing.T, dir string) {
			b, err := os.ReadFile(filepath.Join(dir, "service-peers.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			writeFile(t, dir, "service-peers.yaml", string(b)+"publishNotReadyAddresses: true\n")
		}, `unknown field "publishNotReadyAddresses"`},
		{"a key twice", func(t *testing.T, dir string) {
			replaceIn(t, dir, "poddisruptionbudget.yaml", "  maxUnavailable: 1", "  maxUnavailable: 1\n  maxUnavailable: 2")
		}, `"maxUnavailable" already set`},
		{"a ServiceMonitor field of another kind", func(t *testing.T, dir string) {
			replaceIn(t, dir, "servicemonitor.yaml", "      interval: 15s", "      interval: 15s\n      scrapeInterval: 15s")
		}, `unknown field "scrapeInterval"`},
		{"a wrong type", func(t *testing.T, dir string) {
			replaceIn(t, dir, "statefulset.yaml", "  replicas: 3", "  replicas: three")
		}, "cannot unmarshal string"},
		{"a file not listed", func(t *testing.T, dir string) {
			writeFile(t, dir, "networkpolicy.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n")
		}, "networkpolicy.yaml is not listed"},
		{"a listed file missing", func(t *testing.T, dir string) {
			if err := os.Remove(filepath.Join(dir, "service.yaml")); err != nil {
				t.Fatal(err)
			}
		}, `resource "service.yaml" does not exist`},
		{"a resource outside the directory", func(t *testing.T, dir string) {
			replaceIn(t, dir, "kustomization.yaml", "  - service.yaml", "  - service.yaml\n  - ../other/service.yaml")
		}, `resource "../other/service.yaml" is not a file of`},
		{"a kind the test has no type for", func(t *testing.T, dir string) {
			writeFile(t, dir, "configmap.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\n")
			replaceIn(t, dir, "kustomization.yaml", "  - service.yaml", "  - service.yaml\n  - configmap.yaml")
		}, `kind "ConfigMap": not a kind this deployment has`},
		{"a kustomization field the test does not check", func(t *testing.T, dir string) {
			replaceIn(t, dir, "kustomization.yaml", "kind: Kustomization", "kind: Kustomization\nnamePrefix: x-")
		}, `unknown field "namePrefix"`},
		{"a second document of a known kind", func(t *testing.T, dir string) {
			b, err := os.ReadFile(filepath.Join(dir, "poddisruptionbudget.yaml"))
			if err != nil {
				t.Fatal(err)
			}
			writeFile(t, dir, "poddisruptionbudget.yaml", string(b)+"---\n"+string(b))
		}, "document 2: a second PodDisruptionBudget"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := copyDir(t, kubernetesDir)
			tc.edit(t, dir)
			_, err := loadKustomization(dir)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("load: got %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestReadAgentSettings(t *testing.T) {
	t.Parallel()
	settings, err := readAgentSettings(configSource)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]agentSetting{
		"ATTUNE_API_TOKEN_FILE":   {},
		"TIMERD_EXPECT":           {def: "1"},
		"TIMERD_HTTP_ADDR":        {def: ":8470"},
		"TIMERD_SHUTDOWN_TIMEOUT": {def: "10s"},
		"TIMERD_SETTLE_DELAY":     {retired: true},
		"TIMERD_WORKERS":          {deprecated: true},
	} {
		if got, ok := settings[name]; !ok || got != want {
			t.Errorf("%s: got %+v (found %t), want %+v", name, got, ok, want)
		}
	}
	if _, ok := settings["TIMERD_API_ADDR"]; ok {
		t.Error("TIMERD_API_ADDR is timerd dev's, not the agent's")
	}

	dir := t.TempDir()
	for name, src := range map[string]string{
		"none.go":  "package main\n\nvar otherSettings = []int{1}\n",
		"shape.go": "package main\n\nvar agentSettings = []agentSetting{{key: \"x\"}}\n",
		"bad.go":   "package main\n\nvar agentSettings = [",
	} {
		if _, err := readAgentSettings(writeFile(t, dir, name, src)); err == nil {
			t.Errorf("%s: no error from a file without the settings table", name)
		}
	}
}

func copyDir(t *testing.T, src string) string {
	t.Helper()
	dst := t.TempDir()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, dst, e.Name(), string(b))
	}
	return dst
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// replaceIn replaces old, which must be in the file, with new.
func replaceIn(t *testing.T, dir, name, old, new string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), old) {
		t.Fatalf("%s has no %q", name, old)
	}
	writeFile(t, dir, name, strings.Replace(string(b), old, new, 1))
}
