package deploy

import (
	"fmt"
	"net"
	"net/url"
	"path"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1validation "k8s.io/apimachinery/pkg/apis/meta/v1/validation"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	"github.com/timerd/timerd/cluster"
	"github.com/timerd/timerd/ingest"
)

const (
	dataMountPath = "/var/lib/timerd" // the image's volume
	imageName     = "timerd"          // what an overlay's `images: - name:` replaces
	// shutdownBeyond is what shutdown may take beyond 3 × TIMERD_SHUTDOWN_TIMEOUT
	// (the hand-over's ½ and the settle's ¼, the outbox flush's ½, the hand-over of
	// what is left ½: 1¾ of it, rounded up to 3 for the budgets to come): two forced
	// retirements' waits (3 s each) and the HTTP server's shutdown (2 s) in
	// cmd/timerd/node, the POSTs in flight's grace (ingest.DefaultStopGrace), and the
	// gossip leave (cluster.DefaultLeaveTimeout). The same rule as the systemd unit's
	// TimeoutStopSec (test/e2e TestSystemdUnit): 3 × it + 15 s covers it.
	shutdownBeyond = 8*time.Second + ingest.DefaultStopGrace + cluster.DefaultLeaveTimeout
)

// secretSettings name a secret in their value: set only from a Secret.
var secretSettings = []string{"ATTUNE_API_TOKEN", "TIMERD_GOSSIP_KEY"}

// fileSettings name a file the node reads again while it runs (a rotated Secret)
// or at start.
var fileSettings = []string{"ATTUNE_API_TOKEN_FILE", "TIMERD_GOSSIP_KEYRING_FILE", "TIMERD_HTTP_TOKEN_FILE", "TIMERD_HTTP_CONFIG_FILE"}

// check returns everything wrong with the manifests for timerd, whose settings are
// settings.
func (m *manifests) check(settings map[string]agentSetting) []error {
	c := &checker{m: m, settings: settings}
	c.statefulSet()
	if c.container == nil {
		return c.errs
	}
	c.env()
	c.ports()
	c.probes()
	c.services()
	c.disruptionBudget()
	c.serviceMonitor()
	c.volumes()
	c.security()
	c.apiRules()
	return c.errs
}

type checker struct {
	m         *manifests
	settings  map[string]agentSetting
	container *corev1.Container
	env_      map[string]corev1.EnvVar
	httpPort  int32 // what TIMERD_HTTP_ADDR makes the node listen on
	gossip    int32 // likewise TIMERD_BIND_ADDR
	errs      []error
}

func (c *checker) errorf(format string, args ...any) {
	c.errs = append(c.errs, fmt.Errorf(format, args...))
}

func (c *checker) statefulSet() {
	s := c.m.statefulSet
	spec := s.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		c.errorf("StatefulSet %s: %d containers, want the one timerd", s.Name, len(spec.Containers))
		return
	}
	c.container = &spec.Containers[0]
	if repo, _, _ := strings.Cut(c.container.Image, ":"); repo != imageName {
		c.errorf("StatefulSet %s: image %q: want %s:TAG, the name an overlay's kustomize `images:` sets", s.Name, c.container.Image, imageName)
	}
	if s.Spec.Selector == nil || !selects(s.Spec.Selector.MatchLabels, s.Spec.Template.Labels) || len(s.Spec.Selector.MatchExpressions) > 0 {
		c.errorf("StatefulSet %s: its selector does not select its pods' labels %v", s.Name, s.Spec.Template.Labels)
	}
	if s.Spec.PodManagementPolicy != appsv1.ParallelPodManagement {
		c.errorf("StatefulSet %s: podManagementPolicy %q, want Parallel (with TIMERD_EXPECT, pods started at once join into one cluster)", s.Name, s.Spec.PodManagementPolicy)
	}
	if s.Spec.Replicas == nil {
		c.errorf("StatefulSet %s: replicas unset: set it, and TIMERD_EXPECT to the same", s.Name)
	}
	if s.Spec.UpdateStrategy.Type == appsv1.OnDeleteStatefulSetStrategyType {
		c.errorf("StatefulSet %s: updateStrategy OnDelete: `kubectl rollout restart` would restart nothing", s.Name)
	} else if ru := s.Spec.UpdateStrategy.RollingUpdate; ru != nil && ru.MaxUnavailable != nil && ru.MaxUnavailable.String() != "1" {
		c.errorf("StatefulSet %s: rollingUpdate.maxUnavailable %s: a rolling restart must take one node at a time", s.Name, ru.MaxUnavailable)
	}
}

// env checks every variable the container sets against timerd's settings, and the
// values the cluster depends on.
func (c *checker) env() {
	s := c.m.statefulSet
	c.env_ = map[string]corev1.EnvVar{}
	for _, e := range c.container.Env {
		if _, dup := c.env_[e.Name]; dup {
			c.errorf("env %s: set twice", e.Name)
		}
		c.env_[e.Name] = e
		st, known := c.settings[e.Name]
		switch {
		case !known:
			c.errorf("env %s: not a setting timerd agent reads (cmd/timerd/config.go)", e.Name)
		case st.retired:
			c.errorf("env %s: a retired setting, ignored by timerd agent", e.Name)
		case st.deprecated:
			c.errorf("env %s: a deprecated setting", e.Name)
		}
	}
	if len(c.container.EnvFrom) > 0 {
		c.errorf("envFrom: the settings a Secret or ConfigMap would bring are not checked; set each with env")
	}
	for _, name := range secretSettings {
		if e, ok := c.env_[name]; ok && (e.ValueFrom == nil || e.ValueFrom.SecretKeyRef == nil) {
			c.errorf("env %s: a secret, set from a Secret (secretKeyRef) or use its _FILE setting, not a value in the manifest", name)
		}
	}
	if e, ok := c.env_["ATTUNE_MQ_URL"]; ok && e.Value != "" {
		if u, err := url.Parse(e.Value); err != nil || u.User != nil {
			c.errorf("env ATTUNE_MQ_URL: a URL with credentials in the manifest: set it from a Secret (secretKeyRef)")
		}
	}
	for _, name := range []string{"ATTUNE_API_URL", "TIMERD_DATA_DIR"} {
		if _, ok := c.env_[name]; !ok {
			c.errorf("env %s: required by timerd agent, not set", name)
		}
	}
	if !c.has("ATTUNE_API_TOKEN") && !c.has("ATTUNE_API_TOKEN_FILE") {
		c.errorf("env ATTUNE_API_TOKEN_FILE: required (or ATTUNE_API_TOKEN), not set")
	}
	if !c.has("TIMERD_GOSSIP_KEY") && !c.has("TIMERD_GOSSIP_KEYRING_FILE") {
		c.errorf("env TIMERD_GOSSIP_KEYRING_FILE: a cluster refuses to gossip without a key (or TIMERD_GOSSIP_KEY), not set")
	}
	if !c.fieldRef("TIMERD_ADVERTISE_ADDR", "status.podIP") {
		c.errorf("env TIMERD_ADVERTISE_ADDR: want valueFrom.fieldRef status.podIP, the address peers reach the pod at")
	}
	if !c.fieldRef("TIMERD_NODE_NAME", "metadata.name") {
		c.errorf("env TIMERD_NODE_NAME: want valueFrom.fieldRef metadata.name, the pod's stable name (it names the node's queue)")
	}
	if join := c.value("TIMERD_JOIN", ""); !c.namesHeadlessService(join) {
		c.errorf("env TIMERD_JOIN %q: want the headless Service %q, whose DNS name resolves to every pod", join, s.Spec.ServiceName)
	}
	expect := c.value("TIMERD_EXPECT", c.settings["TIMERD_EXPECT"].def)
	if s.Spec.Replicas != nil && s.Spec.PodManagementPolicy == appsv1.ParallelPodManagement && expect != strconv.Itoa(int(*s.Spec.Replicas)) {
		c.errorf("env TIMERD_EXPECT %q: want %d, the replicas: pods started in parallel must not fire as islands", expect, *s.Spec.Replicas)
	}

	shutdown, err := time.ParseDuration(c.value("TIMERD_SHUTDOWN_TIMEOUT", c.settings["TIMERD_SHUTDOWN_TIMEOUT"].def))
	if err != nil {
		c.errorf("env TIMERD_SHUTDOWN_TIMEOUT: %v", err)
	} else {
		want := 3*shutdown + shutdownBeyond
		grace := s.Spec.Template.Spec.TerminationGracePeriodSeconds
		if grace == nil || time.Duration(*grace)*time.Second <= want {
			c.errorf("terminationGracePeriodSeconds %s: want more than %s: 3 × TIMERD_SHUTDOWN_TIMEOUT (%s) and %s, what shutdown may take",
				fmtSeconds(grace), want, shutdown, shutdownBeyond)
		}
	}

	c.httpPort = c.port("TIMERD_HTTP_ADDR", c.settings["TIMERD_HTTP_ADDR"].def)
	c.gossip = c.port("TIMERD_BIND_ADDR", cluster.DefaultBindAddr)
}

func (c *checker) has(name string) bool { _, ok := c.env_[name]; return ok }

// value is the literal value of the variable name, def when it is not set.
func (c *checker) value(name, def string) string {
	if e, ok := c.env_[name]; ok {
		return e.Value
	}
	return def
}

func (c *checker) fieldRef(name, fieldPath string) bool {
	e, ok := c.env_[name]
	return ok && e.Value == "" && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == fieldPath
}

// port is the port of the host:port in the variable name (or def).
func (c *checker) port(name, def string) int32 {
	v := c.value(name, def)
	_, p, err := net.SplitHostPort(v)
	n, perr := strconv.ParseInt(p, 10, 32)
	if err != nil || perr != nil || n <= 0 {
		c.errorf("env %s %q: want host:port with a fixed port", name, v)
		return 0
	}
	return int32(n)
}

// namesHeadlessService reports whether join is the StatefulSet's governing Service,
// by its short name or its name in the cluster's DNS, with the gossip port or none.
func (c *checker) namesHeadlessService(join string) bool {
	svc := c.m.statefulSet.Spec.ServiceName
	host := join
	if h, p, err := net.SplitHostPort(join); err == nil {
		if p != strconv.Itoa(int(c.port("TIMERD_BIND_ADDR", cluster.DefaultBindAddr))) {
			return false
		}
		host = h
	}
	return svc != "" && (host == svc || strings.HasPrefix(host, svc+"."))
}

// ports checks that the container declares the ports timerd listens on, and no other.
func (c *checker) ports() {
	var http, gossipTCP, gossipUDP bool
	for _, p := range c.container.Ports {
		proto := protocol(p.Protocol)
		switch {
		case p.ContainerPort == c.httpPort && proto == corev1.ProtocolTCP:
			http = true
		case p.ContainerPort == c.gossip && proto == corev1.ProtocolTCP:
			gossipTCP = true
		case p.ContainerPort == c.gossip && proto == corev1.ProtocolUDP:
			gossipUDP = true
		default:
			c.errorf("containerPort %d/%s (%s): timerd listens on %d/TCP (HTTP) and %d/TCP+UDP (gossip) only", p.ContainerPort, proto, p.Name, c.httpPort, c.gossip)
		}
	}
	if !http || !gossipTCP || !gossipUDP {
		c.errorf("containerPorts: want %d/TCP, %d/TCP and %d/UDP; have HTTP %t, gossip TCP %t, gossip UDP %t", c.httpPort, c.gossip, c.gossip, http, gossipTCP, gossipUDP)
	}
}

// containerPort resolves a probe's or Service's target port, a number or a name.
func (c *checker) containerPort(p intstr.IntOrString, proto corev1.Protocol) (int32, bool) {
	for _, cp := range c.container.Ports {
		if protocol(cp.Protocol) != protocol(proto) {
			continue
		}
		if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
			return cp.ContainerPort, true
		}
	}
	return 0, false
}

func (c *checker) probes() {
	for _, p := range []struct {
		kind  string
		probe *corev1.Probe
		path  string
		must  bool
	}{
		{"livenessProbe", c.container.LivenessProbe, "/healthz", true},
		{"readinessProbe", c.container.ReadinessProbe, "/readyz", true},
		{"startupProbe", c.container.StartupProbe, "/healthz", false},
	} {
		switch {
		case p.probe == nil:
			if p.must {
				c.errorf("%s: missing, want GET %s on port %d", p.kind, p.path, c.httpPort)
			}
		case p.probe.HTTPGet == nil:
			c.errorf("%s: want httpGet %s", p.kind, p.path)
		default:
			g := p.probe.HTTPGet
			if g.Path != p.path {
				c.errorf("%s: path %q, want %s", p.kind, g.Path, p.path)
			}
			if port, ok := c.containerPort(g.Port, corev1.ProtocolTCP); !ok || port != c.httpPort {
				c.errorf("%s: port %s is not the HTTP port %d", p.kind, g.Port.String(), c.httpPort)
			}
		}
	}
}

func (c *checker) services() {
	s := c.m.statefulSet
	var headless *corev1.Service
	for _, svc := range c.m.services {
		if !selects(svc.Spec.Selector, s.Spec.Template.Labels) || len(svc.Spec.Selector) == 0 {
			c.errorf("Service %s: its selector %v does not select the pods", svc.Name, svc.Spec.Selector)
		}
		for _, p := range svc.Spec.Ports {
			target := p.TargetPort
			if target.Type == intstr.Int && target.IntVal == 0 {
				target = intstr.FromInt32(p.Port)
			}
			port, ok := c.containerPort(target, p.Protocol)
			if !ok || (port != c.httpPort && port != c.gossip) {
				c.errorf("Service %s port %s: targetPort %s/%s is not timerd's HTTP port %d or gossip port %d",
					svc.Name, p.Name, target.String(), protocol(p.Protocol), c.httpPort, c.gossip)
			}
		}
		if svc.Name == s.Spec.ServiceName {
			headless = svc
		}
	}
	if headless == nil {
		c.errorf("StatefulSet %s: serviceName %q names no Service", s.Name, s.Spec.ServiceName)
		return
	}
	if headless.Spec.ClusterIP != corev1.ClusterIPNone {
		c.errorf("Service %s: clusterIP %q, want None (headless: its DNS name resolves to every pod)", headless.Name, headless.Spec.ClusterIP)
	}
	if !headless.Spec.PublishNotReadyAddresses {
		c.errorf("Service %s: publishNotReadyAddresses false: pods that are not ready yet (all, at first) would not find each other", headless.Name)
	}
	var tcp, udp bool
	for _, p := range headless.Spec.Ports {
		if port, ok := c.containerPort(p.TargetPort, p.Protocol); ok && port == c.gossip {
			tcp = tcp || protocol(p.Protocol) == corev1.ProtocolTCP
			udp = udp || protocol(p.Protocol) == corev1.ProtocolUDP
		}
	}
	if !tcp || !udp {
		c.errorf("Service %s: want the gossip port %d in TCP and UDP", headless.Name, c.gossip)
	}
}

func (c *checker) disruptionBudget() {
	pdb := c.m.pdb
	if mu := pdb.Spec.MaxUnavailable; mu == nil || mu.Type != intstr.Int || mu.IntVal != 1 || pdb.Spec.MinAvailable != nil {
		c.errorf("PodDisruptionBudget %s: want maxUnavailable 1 and no minAvailable", pdb.Name)
	}
	if pdb.Spec.Selector == nil || len(pdb.Spec.Selector.MatchLabels) == 0 || !selects(pdb.Spec.Selector.MatchLabels, c.m.statefulSet.Spec.Template.Labels) {
		c.errorf("PodDisruptionBudget %s: its selector does not select the pods", pdb.Name)
	}
}

// serviceMonitor checks that the ServiceMonitor scrapes /metrics on the HTTP port of
// exactly one Service (two would scrape every pod twice).
func (c *checker) serviceMonitor() {
	sm := c.m.monitor
	var selected []*corev1.Service
	for _, svc := range c.m.services {
		if len(sm.Spec.Selector.MatchExpressions) == 0 && selects(sm.Spec.Selector.MatchLabels, svc.Labels) {
			selected = append(selected, svc)
		}
	}
	if len(selected) != 1 {
		c.errorf("ServiceMonitor %s: selects %d Services, want one", sm.Name, len(selected))
		return
	}
	svc := selected[0]
	if len(sm.Spec.Endpoints) == 0 {
		c.errorf("ServiceMonitor %s: no endpoints", sm.Name)
	}
	for _, ep := range sm.Spec.Endpoints {
		if ep.Path != "" && ep.Path != "/metrics" {
			c.errorf("ServiceMonitor %s: path %q, want /metrics", sm.Name, ep.Path)
		}
		var found bool
		for _, p := range svc.Spec.Ports {
			if p.Name == ep.Port {
				port, ok := c.containerPort(p.TargetPort, p.Protocol)
				found = ok && port == c.httpPort
			}
		}
		if !found {
			c.errorf("ServiceMonitor %s: endpoint port %q is not Service %s's port to %d", sm.Name, ep.Port, svc.Name, c.httpPort)
		}
	}
}

// volumes checks the data volume and that every file setting is a file of a Secret
// mounted as a directory (a subPath mount is never updated by the kubelet).
func (c *checker) volumes() {
	s := c.m.statefulSet
	volumes := map[string]corev1.Volume{}
	for _, v := range s.Spec.Template.Spec.Volumes {
		volumes[v.Name] = v
	}
	mounts := map[string]corev1.VolumeMount{} // by path
	var data *corev1.VolumeMount
	for i, vm := range c.container.VolumeMounts {
		mounts[path.Clean(vm.MountPath)] = vm
		v, isPodVolume := volumes[vm.Name]
		if isPodVolume && (v.Secret != nil || v.Projected != nil || v.ConfigMap != nil) {
			if vm.SubPath != "" || vm.SubPathExpr != "" {
				c.errorf("volumeMount %s at %s: subPath: the kubelet never updates it, so a rotated secret is never seen; mount the directory", vm.Name, vm.MountPath)
			}
			if !vm.ReadOnly {
				c.errorf("volumeMount %s at %s: mount a Secret readOnly", vm.Name, vm.MountPath)
			}
		}
		if vm.MountPath == dataMountPath {
			data = &c.container.VolumeMounts[i]
		}
	}
	var claimed bool
	for _, t := range s.Spec.VolumeClaimTemplates {
		claimed = claimed || (data != nil && t.Name == data.Name)
	}
	if data == nil || !claimed {
		c.errorf("StatefulSet %s: want a volumeClaimTemplate mounted at %s", s.Name, dataMountPath)
	} else if dir := c.value("TIMERD_DATA_DIR", ""); dir != dataMountPath && !strings.HasPrefix(path.Clean(dir), dataMountPath+"/") {
		c.errorf("env TIMERD_DATA_DIR %q: not on the volume mounted at %s", dir, dataMountPath)
	}

	for _, name := range fileSettings {
		e, ok := c.env_[name]
		if !ok {
			continue
		}
		dir, file := path.Split(path.Clean(e.Value))
		vm, ok := mounts[path.Clean(dir)]
		v := volumes[vm.Name]
		if !ok || v.Secret == nil {
			c.errorf("env %s %q: not a file of a Secret mounted as a directory", name, e.Value)
			continue
		}
		if len(v.Secret.Items) > 0 && !containsItem(v.Secret.Items, file) {
			c.errorf("env %s %q: the volume %s projects no item %q", name, e.Value, v.Name, file)
		}
		if v.Secret.Optional != nil && *v.Secret.Optional {
			c.errorf("volume %s: optional, but %s needs its file", v.Name, name)
		}
	}
}

func (c *checker) security() {
	pod := c.m.statefulSet.Spec.Template.Spec.SecurityContext
	sc := c.container.SecurityContext
	nonRoot := (sc != nil && sc.RunAsNonRoot != nil && *sc.RunAsNonRoot) ||
		(pod != nil && pod.RunAsNonRoot != nil && *pod.RunAsNonRoot && (sc == nil || sc.RunAsNonRoot == nil))
	if !nonRoot {
		c.errorf("securityContext: want runAsNonRoot true")
	}
	for _, uid := range []*int64{podUser(pod), containerUser(sc)} {
		if uid != nil && *uid == 0 {
			c.errorf("securityContext: runAsUser 0")
		}
	}
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		c.errorf("securityContext: want readOnlyRootFilesystem true (timerd writes only its data directory)")
	}
	if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		c.errorf("securityContext: want allowPrivilegeEscalation false")
	}
	r := c.container.Resources
	if r.Requests.Cpu().IsZero() || r.Requests.Memory().IsZero() || r.Limits.Memory().IsZero() {
		c.errorf("resources: want requests of cpu and memory and a memory limit")
	}
}

// apiRules checks what the API server would refuse and a decode lets through: names,
// labels, port names, env names, volume references and modes.
func (c *checker) apiRules() {
	invalid := func(what string, msgs []string) {
		if len(msgs) > 0 {
			c.errorf("%s: %s", what, strings.Join(msgs, "; "))
		}
	}
	labels := func(what string, l map[string]string) {
		if errs := metav1validation.ValidateLabels(l, field.NewPath(what)); len(errs) > 0 {
			c.errorf("%s", errs.ToAggregate())
		}
	}
	s := c.m.statefulSet
	invalid("StatefulSet name "+strconv.Quote(s.Name), validation.IsDNS1123Label(s.Name))
	labels("StatefulSet "+s.Name+" labels", s.Labels)
	labels("StatefulSet "+s.Name+" pod labels", s.Spec.Template.Labels)
	for _, svc := range c.m.services {
		invalid("Service name "+strconv.Quote(svc.Name), validation.IsDNS1035Label(svc.Name))
		labels("Service "+svc.Name+" labels", svc.Labels)
		seen := map[string]bool{}
		for _, p := range svc.Spec.Ports {
			if len(svc.Spec.Ports) > 1 || p.Name != "" {
				invalid(fmt.Sprintf("Service %s port name %q", svc.Name, p.Name), validation.IsDNS1123Label(p.Name))
			}
			if seen[p.Name] {
				c.errorf("Service %s: port name %q twice", svc.Name, p.Name)
			}
			seen[p.Name] = true
		}
	}
	invalid("PodDisruptionBudget name "+strconv.Quote(c.m.pdb.Name), validation.IsDNS1123Subdomain(c.m.pdb.Name))
	invalid("ServiceMonitor name "+strconv.Quote(c.m.monitor.Name), validation.IsDNS1123Subdomain(c.m.monitor.Name))

	seen := map[string]bool{}
	for _, p := range c.container.Ports {
		invalid(fmt.Sprintf("containerPort name %q", p.Name), validation.IsValidPortName(p.Name))
		if seen[p.Name] {
			c.errorf("containerPort name %q twice", p.Name)
		}
		seen[p.Name] = true
	}
	for _, e := range c.container.Env {
		invalid(fmt.Sprintf("env name %q", e.Name), validation.IsEnvVarName(e.Name))
	}
	volumes := map[string]bool{}
	for _, v := range s.Spec.Template.Spec.Volumes {
		invalid(fmt.Sprintf("volume name %q", v.Name), validation.IsDNS1123Label(v.Name))
		volumes[v.Name] = true
		if v.Secret != nil {
			invalid(fmt.Sprintf("volume %s secretName %q", v.Name, v.Secret.SecretName), validation.IsDNS1123Subdomain(v.Secret.SecretName))
			if m := v.Secret.DefaultMode; m != nil && (*m < 0 || *m > 0o777) {
				c.errorf("volume %s: defaultMode %d is not a file mode (0 to 0777)", v.Name, *m)
			}
		}
	}
	for _, t := range s.Spec.VolumeClaimTemplates {
		volumes[t.Name] = true
	}
	for _, vm := range c.container.VolumeMounts {
		if !volumes[vm.Name] {
			c.errorf("volumeMount %s: no volume or volumeClaimTemplate of that name", vm.Name)
		}
	}
}

// selects reports whether every label of selector is in labels.
func selects(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// protocol is p, TCP when unset (the API's default).
func protocol(p corev1.Protocol) corev1.Protocol {
	if p == "" {
		return corev1.ProtocolTCP
	}
	return p
}

func containsItem(items []corev1.KeyToPath, file string) bool {
	for _, it := range items {
		if path.Clean(it.Path) == file {
			return true
		}
	}
	return false
}

func podUser(sc *corev1.PodSecurityContext) *int64 {
	if sc == nil {
		return nil
	}
	return sc.RunAsUser
}

func containerUser(sc *corev1.SecurityContext) *int64 {
	if sc == nil {
		return nil
	}
	return sc.RunAsUser
}

func fmtSeconds(s *int64) string {
	if s == nil {
		return "unset (30 s)"
	}
	return (time.Duration(*s) * time.Second).String()
}
