// Package metricset is the one way timerd registers metrics: each component
// builds its metrics unregistered and registers them on the caller's
// registry with one Register call, as one collector. A prometheus.Registry
// registers a collector whole or not at all, so a clash (the component built
// twice on one registry, or two components exporting one name) leaves the
// registry as it was and comes back as an error naming the metric, never a
// panic; Unregister of what Register returned removes all of it again.
// (promauto.With(reg) panics on a clash, and registering metric by metric
// needs a rollback loop in every package: this is that loop, written once,
// done by the registry itself.)
//
// Scope lets a constructor that builds several components on one registry
// (node.New) undo all their registrations when a later part fails, and its
// Close undo them at shutdown, so that the same registry can take a new
// instance.
//
// It imports nothing of timerd. It sits under scheduler/, the bottom of the
// import graph, because the design card fixes the top-level directories; a
// helper shared by auth and scheduler has no better home.
package metricset

import (
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// set is the metrics of one component as one collector.
type set struct{ cs []prometheus.Collector }

func (s *set) Describe(ch chan<- *prometheus.Desc) {
	for _, c := range s.cs {
		c.Describe(ch)
	}
}

func (s *set) Collect(ch chan<- prometheus.Metric) {
	for _, c := range s.cs {
		c.Collect(ch)
	}
}

// Register registers cs on reg as one collector, all of them or none, and
// returns that collector for reg.Unregister. A nil reg registers nothing
// (nil, nil): the metrics still count, unexported. A clash is an error that
// names the metric and leaves reg unchanged.
func Register(reg prometheus.Registerer, cs ...prometheus.Collector) (prometheus.Collector, error) {
	if reg == nil {
		return nil, nil
	}
	s := &set{cs: cs}
	if err := reg.Register(s); err != nil {
		return nil, &RegisterError{Metrics: clashing(err, s), Err: err}
	}
	return s, nil
}

// RegisterError is Register's error: what clashed, and the registry's error.
// A caller tells it from an error of its input with errors.As.
type RegisterError struct {
	Metrics string // "metric timerd_x", or "metrics timerd_x, timerd_y and 3 more"
	Err     error
}

func (e *RegisterError) Error() string { return "register " + e.Metrics + ": " + e.Err.Error() }

func (e *RegisterError) Unwrap() error { return e.Err }

// clashing names the metrics err is about: the one the registry's message
// names, or, when the whole set is registered already (AlreadyRegisteredError
// names none), the set's.
func clashing(err error, s *set) string {
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) {
		if name, ok := fqName(err.Error()); ok {
			return "metric " + name
		}
	}
	names := names(s)
	switch {
	case len(names) == 1:
		return "metric " + names[0]
	case len(names) <= 3:
		return "metrics " + strings.Join(names, ", ")
	}
	return fmt.Sprintf("metrics %s and %d more", strings.Join(names[:2], ", "), len(names)-2)
}

// names lists the metric names c describes, in its order.
func names(c prometheus.Collector) []string {
	ch := make(chan *prometheus.Desc)
	go func() {
		c.Describe(ch)
		close(ch)
	}()
	var names []string
	for d := range ch {
		if name, ok := fqName(d.String()); ok {
			names = append(names, name)
		}
	}
	return names
}

// fqName reads the first metric name out of a Desc's text (`Desc{fqName:
// "timerd_x", …}`): prometheus.Desc has no accessor for it.
func fqName(s string) (string, bool) {
	const key = `fqName: `
	i := strings.Index(s, key)
	if i < 0 {
		return "", false
	}
	q, err := strconv.QuotedPrefix(s[i+len(key):])
	if err != nil {
		return "", false
	}
	name, err := strconv.Unquote(q)
	return name, err == nil && name != ""
}

// Scope is a Registerer that remembers what was registered through it on
// another, so that UnregisterAll undoes all of it. Give it to the components
// a constructor builds on a caller's registry and push UnregisterAll first on
// its cleanup stack: a failure halfway, and a Close, leave the registry as it
// was.
type Scope struct {
	reg  prometheus.Registerer
	mu   sync.Mutex
	held []prometheus.Collector
}

var _ prometheus.Registerer = (*Scope)(nil)

// NewScope returns a Scope registering on reg.
func NewScope(reg prometheus.Registerer) *Scope { return &Scope{reg: reg} }

// Register registers c on the underlying registerer and remembers it.
func (s *Scope) Register(c prometheus.Collector) error {
	if err := s.reg.Register(c); err != nil {
		return err
	}
	s.mu.Lock()
	s.held = append(s.held, c)
	s.mu.Unlock()
	return nil
}

// MustRegister is Register that panics on a clash, as prometheus.Registerer
// requires. timerd registers with Register (see the package comment).
func (s *Scope) MustRegister(cs ...prometheus.Collector) {
	for _, c := range cs {
		if err := s.Register(c); err != nil {
			panic(err)
		}
	}
}

// Unregister unregisters c and forgets it.
func (s *Scope) Unregister(c prometheus.Collector) bool {
	s.mu.Lock()
	s.held = withoutCollector(s.held, c)
	s.mu.Unlock()
	return s.reg.Unregister(c)
}

// Names lists, sorted, the metric names of what is registered through s.
func (s *Scope) Names() []string {
	s.mu.Lock()
	held := slices.Clone(s.held)
	s.mu.Unlock()
	var all []string
	for _, c := range held {
		all = append(all, names(c)...)
	}
	slices.Sort(all)
	return slices.Compact(all)
}

// UnregisterAll unregisters what is registered through s, last first. It
// returns nil: it has the signature of a cleanup step.
func (s *Scope) UnregisterAll() error {
	s.mu.Lock()
	held := s.held
	s.held = nil
	s.mu.Unlock()
	for i := len(held) - 1; i >= 0; i-- {
		s.reg.Unregister(held[i])
	}
	return nil
}

// withoutCollector drops the entries of cs that are c itself. Collectors of
// an uncomparable type are told apart by nothing and stay (unregistering one
// twice is harmless).
func withoutCollector(cs []prometheus.Collector, c prometheus.Collector) []prometheus.Collector {
	if c == nil || !reflect.TypeOf(c).Comparable() {
		return cs
	}
	out := cs[:0]
	for _, h := range cs {
		if reflect.TypeOf(h) == reflect.TypeOf(c) && h == c {
			continue
		}
		out = append(out, h)
	}
	return out
}
