package deploy

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// kubernetesDir holds the manifests under test, from this package's directory.
const kubernetesDir = "../../docs/deploy/kubernetes"

// kustomization is the part of a kustomization.yaml the base uses. It is decoded
// strictly: a field added to the file must be added here, and checked.
type kustomization struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Resources  []string `json:"resources"`
}

// manifests are the objects of a kustomization, decoded.
type manifests struct {
	statefulSet *appsv1.StatefulSet
	services    []*corev1.Service
	pdb         *policyv1.PodDisruptionBudget
	monitor     *monitoringv1.ServiceMonitor
}

// newObject is the typed object for an apiVersion and kind, nil for one the
// deployment has no business with.
func newObject(tm metav1.TypeMeta) any {
	switch tm.APIVersion + " " + tm.Kind {
	case "apps/v1 StatefulSet":
		return &appsv1.StatefulSet{}
	case "v1 Service":
		return &corev1.Service{}
	case "policy/v1 PodDisruptionBudget":
		return &policyv1.PodDisruptionBudget{}
	case "monitoring.coreos.com/v1 ServiceMonitor":
		return &monitoringv1.ServiceMonitor{}
	}
	return nil
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// loadKustomization reads dir's kustomization.yaml and every resource it lists,
// decoding each strictly (an unknown or duplicate field is an error). Every YAML file
// of dir must be listed and every listed one must be a file of dir.
func loadKustomization(dir string) (*manifests, error) {
	b, err := os.ReadFile(filepath.Join(dir, "kustomization.yaml"))
	if err != nil {
		return nil, err
	}
	var k kustomization
	if err := yaml.UnmarshalStrict(b, &k); err != nil {
		return nil, fmt.Errorf("kustomization.yaml: %w", err)
	}
	if k.APIVersion != "kustomize.config.k8s.io/v1beta1" || k.Kind != "Kustomization" {
		return nil, fmt.Errorf("kustomization.yaml: apiVersion %q kind %q, want kustomize.config.k8s.io/v1beta1 Kustomization", k.APIVersion, k.Kind)
	}
	files, err := yamlFiles(dir)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, r := range k.Resources {
		if filepath.Base(r) != r {
			errs = append(errs, fmt.Errorf("kustomization.yaml: resource %q is not a file of %s", r, dir))
		} else if !slices.Contains(files, r) {
			errs = append(errs, fmt.Errorf("kustomization.yaml: resource %q does not exist", r))
		}
	}
	for _, f := range files {
		if !slices.Contains(k.Resources, f) {
			errs = append(errs, fmt.Errorf("%s is not listed in kustomization.yaml's resources", f))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	m := &manifests{}
	for _, f := range k.Resources {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return nil, err
		}
		for i, doc := range docSeparator.Split(string(b), -1) {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			if err := m.add([]byte(doc)); err != nil {
				errs = append(errs, fmt.Errorf("%s, document %d: %w", f, i+1, err))
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	switch {
	case m.statefulSet == nil:
		return nil, errors.New("no StatefulSet")
	case m.pdb == nil:
		return nil, errors.New("no PodDisruptionBudget")
	case m.monitor == nil:
		return nil, errors.New("no ServiceMonitor")
	}
	return m, nil
}

// add decodes one YAML document strictly into its type.
func (m *manifests) add(doc []byte) error {
	var tm metav1.TypeMeta
	if err := yaml.Unmarshal(doc, &tm); err != nil {
		return err
	}
	obj := newObject(tm)
	if obj == nil {
		return fmt.Errorf("apiVersion %q kind %q: not a kind this deployment has (the test decodes StatefulSet, Service, PodDisruptionBudget and ServiceMonitor)", tm.APIVersion, tm.Kind)
	}
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return fmt.Errorf("%s: %w", tm.Kind, err)
	}
	switch o := obj.(type) {
	case *appsv1.StatefulSet:
		if m.statefulSet != nil {
			return errors.New("a second StatefulSet")
		}
		m.statefulSet = o
	case *corev1.Service:
		m.services = append(m.services, o)
	case *policyv1.PodDisruptionBudget:
		if m.pdb != nil {
			return errors.New("a second PodDisruptionBudget")
		}
		m.pdb = o
	case *monitoringv1.ServiceMonitor:
		if m.monitor != nil {
			return errors.New("a second ServiceMonitor")
		}
		m.monitor = o
	}
	return nil
}

// deepCopy is a copy of m that shares nothing with it, for a test to break.
func (m *manifests) deepCopy() *manifests {
	c := &manifests{statefulSet: m.statefulSet.DeepCopy(), pdb: m.pdb.DeepCopy(), monitor: m.monitor.DeepCopy()}
	for _, s := range m.services {
		c.services = append(c.services, s.DeepCopy())
	}
	return c
}

// yamlFiles are the names of dir's YAML files but kustomization.yaml.
func yamlFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var files []string
	for _, e := range entries {
		n := e.Name()
		if e.Type().IsRegular() && (strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml")) && n != "kustomization.yaml" {
			files = append(files, n)
		}
	}
	return files, nil
}

// stripComments drops the lines that are only a YAML comment.
func stripComments(doc string) string {
	var b bytes.Buffer
	for line := range strings.Lines(doc) {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line)
		}
	}
	return b.String()
}
