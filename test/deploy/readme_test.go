package deploy

import (
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"sigs.k8s.io/yaml"
)

// overlay is the kustomization README.md has the user write, decoded strictly.
type overlay struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Namespace  string   `json:"namespace"`
	Resources  []string `json:"resources"`
	Images     []struct {
		Name    string `json:"name"`
		NewName string `json:"newName"`
		NewTag  string `json:"newTag"`
	} `json:"images"`
	Patches []struct {
		Patch string `json:"patch"`
	} `json:"patches"`
}

var (
	heredoc      = regexp.MustCompile(`(?s)cat > kustomization\.yaml <<'EOF'\n(.*?)\nEOF\n`)
	createSecret = regexp.MustCompile(`kubectl (?:-n \S+ )?create secret generic (\S+)((?: --from-(?:file|literal)=[^ =]+=\S+)+)`)
	secretKey    = regexp.MustCompile(`--from-(?:file|literal)=([^ =]+)=`)
)

// TestKubernetesReadme checks what README.md has the user type against the manifests:
// the overlay decodes, names the base and the image, and patches only real fields and
// settings; the Secrets its kubectl lines create are the ones, with the keys, the
// StatefulSet mounts.
func TestKubernetesReadme(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(filepath.Join(kubernetesDir, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	readme := string(b)
	settings, err := readAgentSettings(configSource)
	if err != nil {
		t.Fatal(err)
	}
	m, err := loadKustomization(kubernetesDir)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("overlay", func(t *testing.T) {
		match := heredoc.FindStringSubmatch(readme)
		if match == nil {
			t.Fatal("README.md: no cat > kustomization.yaml <<'EOF' … EOF")
		}
		for _, err := range checkOverlay([]byte(match[1]), m.statefulSet, settings) {
			t.Error(err)
		}
	})

	t.Run("secrets", func(t *testing.T) {
		created := map[string][]string{}
		for _, c := range createSecret.FindAllStringSubmatch(readme, -1) {
			for _, k := range secretKey.FindAllStringSubmatch(c[2], -1) {
				created[c[1]] = append(created[c[1]], k[1])
			}
		}
		for _, err := range checkSecretsCreated(m.statefulSet, created) {
			t.Error(err)
		}
	})

	t.Run("names", func(t *testing.T) {
		// The commands name the StatefulSet, its first pod and the Services as the manifests do.
		for _, want := range []string{
			"kubectl -n timerd scale statefulset " + m.statefulSet.Name + " --replicas 4",
			"kubectl -n timerd rollout restart statefulset/" + m.statefulSet.Name,
			"kubectl -n timerd rollout status statefulset/" + m.statefulSet.Name,
			"kubectl -n timerd exec " + m.statefulSet.Name + "-0 -- /timerd status",
			"kubectl apply -k .",
			"TIMERD_JOIN` | `" + m.statefulSet.Spec.ServiceName,
		} {
			if !strings.Contains(readme, want) {
				t.Errorf("README.md has no %q", want)
			}
		}
		// Its table of settings has every variable the StatefulSet sets.
		for _, e := range m.statefulSet.Spec.Template.Spec.Containers[0].Env {
			if !strings.Contains(readme, "\n| `"+e.Name+"` | ") {
				t.Errorf("README.md's table of settings has no row for %s", e.Name)
			}
		}
	})
}

// checkOverlay checks the overlay kustomization y against the base's StatefulSet.
func checkOverlay(y []byte, sts *appsv1.StatefulSet, settings map[string]agentSetting) []error {
	var errs []error
	var o overlay
	if err := yaml.UnmarshalStrict(y, &o); err != nil {
		return []error{fmt.Errorf("overlay: %w", err)}
	}
	if len(o.Resources) != 1 || path.Clean(o.Resources[0]) != "../timerd/docs/deploy/kubernetes" {
		errs = append(errs, fmt.Errorf("overlay: resources %q, want the base beside it, ../timerd/docs/deploy/kubernetes", o.Resources))
	}
	if len(o.Images) != 1 || o.Images[0].Name != imageName {
		errs = append(errs, fmt.Errorf("overlay: images %+v, want one named %q (the StatefulSet's image)", o.Images, imageName))
	}
	for i, p := range o.Patches {
		var patch appsv1.StatefulSet
		if err := yaml.UnmarshalStrict([]byte(p.Patch), &patch); err != nil {
			errs = append(errs, fmt.Errorf("overlay: patch %d: %w", i, err))
			continue
		}
		if patch.Kind != "StatefulSet" || patch.Name != sts.Name {
			errs = append(errs, fmt.Errorf("overlay: patch %d targets %s %q, want StatefulSet %q", i, patch.Kind, patch.Name, sts.Name))
		}
		for _, c := range patch.Spec.Template.Spec.Containers {
			if c.Name != sts.Spec.Template.Spec.Containers[0].Name {
				errs = append(errs, fmt.Errorf("overlay: patch %d: container %q is not the StatefulSet's", i, c.Name))
			}
			for _, e := range c.Env {
				if _, ok := settings[e.Name]; !ok {
					errs = append(errs, fmt.Errorf("overlay: patch %d: env %s: not a setting timerd agent reads", i, e.Name))
				}
			}
		}
	}
	return errs
}

// checkSecretsCreated checks that created (Secret name: keys) has every Secret and key
// the StatefulSet refers to.
func checkSecretsCreated(sts *appsv1.StatefulSet, created map[string][]string) []error {
	var errs []error
	need := func(what, secret, key string) {
		keys, ok := created[secret]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("%s: Secret %q: README.md creates no such Secret", what, secret))
		case key != "" && !slices.Contains(keys, key):
			errs = append(errs, fmt.Errorf("%s: Secret %q has no key %q in README.md (it creates %v)", what, secret, key, keys))
		}
	}
	volumes := map[string]string{} // mount path: Secret
	spec := sts.Spec.Template.Spec
	for _, v := range spec.Volumes {
		if v.Secret == nil {
			continue
		}
		need("volume "+v.Name, v.Secret.SecretName, "")
		for _, it := range v.Secret.Items {
			need("volume "+v.Name, v.Secret.SecretName, it.Key)
		}
		for _, vm := range spec.Containers[0].VolumeMounts {
			if vm.Name == v.Name {
				volumes[path.Clean(vm.MountPath)] = v.Secret.SecretName
			}
		}
	}
	for _, e := range spec.Containers[0].Env {
		if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
			need("env "+e.Name, e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key)
		}
		if slices.Contains(fileSettings, e.Name) {
			// A file of a Secret volume is one of its keys (or an item's path, which the
			// items check above covers when it is the key).
			dir, file := path.Split(path.Clean(e.Value))
			if secret, ok := volumes[path.Clean(dir)]; ok {
				need("env "+e.Name, secret, file)
			}
		}
	}
	return errs
}

// TestReadmeChecksCatchMistakes feeds the README checks a broken overlay and missing
// Secrets.
func TestReadmeChecksCatchMistakes(t *testing.T) {
	t.Parallel()
	settings, err := readAgentSettings(configSource)
	if err != nil {
		t.Fatal(err)
	}
	m, err := loadKustomization(kubernetesDir)
	if err != nil {
		t.Fatal(err)
	}
	const good = `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: timerd
resources:
  - ../timerd/docs/deploy/kubernetes
images:
  - name: timerd
    newName: r/timerd
patches:
  - patch: |
      apiVersion: apps/v1
      kind: StatefulSet
      metadata:
        name: timerd
      spec:
        template:
          spec:
            containers:
              - name: timerd
                env:
                  - name: ATTUNE_API_URL
                    value: http://a:8080
`
	if errs := checkOverlay([]byte(good), m.statefulSet, settings); len(errs) > 0 {
		t.Fatalf("the good overlay: %v", errs)
	}
	for _, tc := range []struct{ name, old, new, want string }{
		{"a misspelt kustomization field", "images:", "image:", `unknown field "image"`},
		{"another image", "  - name: timerd\n    newName", "  - name: timerd-agent\n    newName", "want one named"},
		{"another base", "../timerd/docs/deploy/kubernetes", "../timerd/docs/deploy", "want the base beside it"},
		{"a misspelt patch field", "        template:", "        templates:", `unknown field "templates"`},
		{"a patch of another container", "              - name: timerd\n", "              - name: agent\n", `container "agent"`},
		{"a patch of an unknown setting", "ATTUNE_API_URL", "ATTUNE_URL", "env ATTUNE_URL: not a setting"},
	} {
		bad := strings.Replace(good, tc.old, tc.new, 1)
		if bad == good {
			t.Fatalf("%s: %q not in the overlay", tc.name, tc.old)
		}
		errs := checkOverlay([]byte(bad), m.statefulSet, settings)
		if !slices.ContainsFunc(errs, func(err error) bool { return strings.Contains(err.Error(), tc.want) }) {
			t.Errorf("%s: no error says %q; got %v", tc.name, tc.want, errs)
		}
	}

	all := map[string][]string{"timerd-gossip": {"keyring"}, "timerd-attune": {"token", "mq-url"}, "timerd-http": {"token"}}
	if errs := checkSecretsCreated(m.statefulSet, all); len(errs) > 0 {
		t.Fatalf("all the Secrets: %v", errs)
	}
	for _, tc := range []struct {
		name    string
		created map[string][]string
		want    string
	}{
		{"no gossip Secret", map[string][]string{"timerd-attune": {"token", "mq-url"}, "timerd-http": {"token"}}, `Secret "timerd-gossip": README.md creates no such Secret`},
		{"the keyring under another key", map[string][]string{"timerd-gossip": {"key"}, "timerd-attune": {"token", "mq-url"}, "timerd-http": {"token"}}, `env TIMERD_GOSSIP_KEYRING_FILE: Secret "timerd-gossip" has no key "keyring"`},
		{"no broker URL", map[string][]string{"timerd-gossip": {"keyring"}, "timerd-attune": {"token"}, "timerd-http": {"token"}}, `env ATTUNE_MQ_URL: Secret "timerd-attune" has no key "mq-url"`},
		{"no token", map[string][]string{"timerd-gossip": {"keyring"}, "timerd-attune": {"mq-url"}, "timerd-http": {"token"}}, `volume attune: Secret "timerd-attune" has no key "token"`},
	} {
		errs := checkSecretsCreated(m.statefulSet, tc.created)
		if !slices.ContainsFunc(errs, func(err error) bool { return strings.Contains(err.Error(), tc.want) }) {
			t.Errorf("%s: no error says %q; got %v", tc.name, tc.want, errs)
		}
	}
}
