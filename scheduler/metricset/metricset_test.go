package metricset

import (
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func counter(name string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: "A counter of the test."})
}

// gathered lists the metric families reg exports.
func gathered(t *testing.T, reg *prometheus.Registry) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	var names []string
	for _, mf := range mfs {
		names = append(names, mf.GetName())
	}
	return names
}

func TestRegister(t *testing.T) {
	reg := prometheus.NewRegistry()
	c, err := Register(reg, counter("a_total"), counter("b_total"))
	if err != nil || c == nil {
		t.Fatalf("Register(a_total, b_total) = %v, %v; want a collector", c, err)
	}
	if got, want := gathered(t, reg), []string{"a_total", "b_total"}; !slices.Equal(got, want) {
		t.Errorf("registry exports %v, want %v", got, want)
	}
	if !reg.Unregister(c) {
		t.Fatal("Unregister of what Register returned = false")
	}
	if got := gathered(t, reg); len(got) != 0 {
		t.Errorf("registry exports %v after Unregister, want nothing", got)
	}
	if _, err := Register(reg, counter("a_total"), counter("b_total")); err != nil {
		t.Errorf("Register after Unregister: %v", err)
	}
}

func TestRegisterNil(t *testing.T) {
	c, err := Register(nil, counter("a_total"))
	if c != nil || err != nil {
		t.Errorf("Register(nil) = %v, %v; want nil, nil", c, err)
	}
}

// A clash is an error naming the metric, and leaves the registry as it was:
// none of the clashing set's other metrics are registered.
func TestRegisterClash(t *testing.T) {
	tests := []struct {
		name     string
		first    []string
		second   []string
		wantName string
	}{
		{"the same set twice", []string{"a_total"}, []string{"a_total"}, "metric a_total"},
		{"the same set of three twice", []string{"a_total", "b_total", "c_total"}, []string{"a_total", "b_total", "c_total"}, "metrics a_total, b_total, c_total"},
		{"the same set of four twice", []string{"a_total", "b_total", "c_total", "d_total"}, []string{"a_total", "b_total", "c_total", "d_total"}, "metrics a_total, b_total and 2 more"},
		{"one name in two sets", []string{"a_total", "b_total"}, []string{"c_total", "b_total", "d_total"}, "metric b_total"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			var first []prometheus.Collector
			for _, n := range tc.first {
				first = append(first, counter(n))
			}
			if _, err := Register(reg, first...); err != nil {
				t.Fatalf("first Register: %v", err)
			}
			before := gathered(t, reg)
			var second []prometheus.Collector
			for _, n := range tc.second {
				second = append(second, counter(n))
			}
			c, err := Register(reg, second...)
			if err == nil || c != nil {
				t.Fatalf("second Register(%v) = %v, %v; want an error", tc.second, c, err)
			}
			if !strings.Contains(err.Error(), "register "+tc.wantName+":") {
				t.Errorf("second Register(%v) = %q, want it to name %q", tc.second, err, tc.wantName)
			}
			var re *RegisterError
			if !errors.As(err, &re) || re.Metrics != tc.wantName {
				t.Errorf("second Register(%v) = %#v, want a *RegisterError of %q", tc.second, err, tc.wantName)
			}
			if got := gathered(t, reg); !slices.Equal(got, before) {
				t.Errorf("registry exports %v after the clash, want %v as before", got, before)
			}
		})
	}
}

// A Registerer that wraps a Registry (labels, a prefix) keeps the all or
// nothing of Register.
func TestRegisterWrapped(t *testing.T) {
	reg := prometheus.NewRegistry()
	wrapped := prometheus.WrapRegistererWith(prometheus.Labels{"node": "a"}, reg)
	c, err := Register(wrapped, counter("a_total"))
	if err != nil {
		t.Fatalf("Register: %v", err)
	}
	if _, err := Register(wrapped, counter("a_total")); err == nil || !strings.Contains(err.Error(), "a_total") {
		t.Errorf("second Register = %v, want an error naming a_total", err)
	}
	if !wrapped.Unregister(c) {
		t.Error("Unregister through the wrapper = false")
	}
}

func TestScopeUnregisterAll(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := Register(reg, counter("outside_total")); err != nil {
		t.Fatal(err)
	}
	scope := NewScope(reg)
	if _, err := Register(scope, counter("a_total")); err != nil {
		t.Fatal(err)
	}
	b, err := Register(scope, counter("b_total"), counter("c_total"))
	if err != nil {
		t.Fatal(err)
	}
	// A clash through the scope is no registration to undo.
	if _, err := Register(scope, counter("outside_total")); err == nil {
		t.Fatal("Register of a clashing metric through the scope succeeded")
	}
	if !scope.Unregister(b) {
		t.Error("Scope.Unregister = false")
	}
	if _, err := Register(reg, counter("b_total"), counter("c_total")); err != nil {
		t.Fatalf("Register of b and c outside the scope after Scope.Unregister: %v", err)
	}
	if got, want := scope.Names(), []string{"a_total"}; !slices.Equal(got, want) {
		t.Errorf("Scope.Names() = %v, want %v", got, want)
	}
	if err := scope.UnregisterAll(); err != nil {
		t.Fatalf("UnregisterAll: %v", err)
	}
	// What the scope let go of is not unregistered again by UnregisterAll.
	if got, want := gathered(t, reg), []string{"b_total", "c_total", "outside_total"}; !slices.Equal(got, want) {
		t.Errorf("registry exports %v after UnregisterAll, want %v", got, want)
	}
	if _, err := Register(scope, counter("a_total")); err != nil {
		t.Errorf("Register through the scope after UnregisterAll: %v", err)
	}
}

func TestScopeMustRegisterPanicsOnAClash(t *testing.T) {
	scope := NewScope(prometheus.NewRegistry())
	scope.MustRegister(counter("a_total"))
	defer func() {
		r := recover()
		err, ok := r.(error)
		var are prometheus.AlreadyRegisteredError
		if !ok || !errors.As(err, &are) {
			t.Errorf("MustRegister of a clash recovered %v, want an AlreadyRegisteredError", r)
		}
	}()
	scope.MustRegister(counter("a_total"))
}
