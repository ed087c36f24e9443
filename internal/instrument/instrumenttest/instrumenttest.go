// Package instrumenttest reads gathered Prometheus metrics in tests: the
// value of one series by name and labels, and the names present.
package instrumenttest

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// Metrics is one gathering of a registry.
type Metrics struct {
	families map[string]*dto.MetricFamily
}

// Gather gathers g, failing t on an error (an inconsistent registry: a
// clash between collectors shows up here).
func Gather(t testing.TB, g prometheus.Gatherer) Metrics {
	t.Helper()
	families, err := g.Gather()
	if err != nil {
		t.Fatalf("gather metrics: %v", err)
	}
	m := Metrics{families: map[string]*dto.MetricFamily{}}
	for _, f := range families {
		m.families[f.GetName()] = f
	}
	return m
}

// Names returns the names of the metric families gathered, sorted.
func (m Metrics) Names() []string {
	names := make([]string, 0, len(m.families))
	for n := range m.families {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Has reports whether a family called name was gathered.
func (m Metrics) Has(name string) bool {
	_, ok := m.families[name]
	return ok
}

// LabelNames returns the label names of the family called name, sorted
// (nil when it has no series).
func (m Metrics) LabelNames(name string) []string {
	f := m.families[name]
	if f == nil || len(f.Metric) == 0 {
		return nil
	}
	var names []string
	for _, l := range f.Metric[0].Label {
		names = append(names, l.GetName())
	}
	sort.Strings(names)
	return names
}

// Value returns the value of the series of name whose labels include
// labels (pairs of name and value): a counter's or a gauge's value, a
// histogram's sample count. It sums every series that matches, and is 0
// when none does.
func (m Metrics) Value(name string, labels ...string) float64 {
	var v float64
	for _, s := range m.series(name, labels) {
		v += value(s)
	}
	return v
}

// value is a counter's or a gauge's value, a histogram's sample count.
func value(s *dto.Metric) float64 {
	switch {
	case s.Counter != nil:
		return s.Counter.GetValue()
	case s.Gauge != nil:
		return s.Gauge.GetValue()
	case s.Histogram != nil:
		return float64(s.Histogram.GetSampleCount())
	}
	return 0
}

// Sum returns a histogram's sum of samples over the series that match, as
// Value.
func (m Metrics) Sum(name string, labels ...string) float64 {
	var v float64
	for _, s := range m.series(name, labels) {
		if s.Histogram != nil {
			v += s.Histogram.GetSampleSum()
		}
	}
	return v
}

// Series returns the label sets of the series of name, each as
// "k=v,k=v" sorted by label name, sorted.
func (m Metrics) Series(name string) []string {
	var out []string
	for _, s := range m.series(name, nil) {
		out = append(out, labelString(s))
	}
	sort.Strings(out)
	return out
}

// labelString is the labels of s, "k=v,k=v" sorted by name.
func labelString(s *dto.Metric) string {
	var kv []string
	for _, l := range s.Label {
		kv = append(kv, l.GetName()+"="+l.GetValue())
	}
	sort.Strings(kv)
	return strings.Join(kv, ",")
}

func (m Metrics) series(name string, labels []string) []*dto.Metric {
	if len(labels)%2 != 0 {
		panic(fmt.Sprintf("instrumenttest: odd label list %q", labels))
	}
	f := m.families[name]
	if f == nil {
		return nil
	}
	var out []*dto.Metric
	for _, s := range f.Metric {
		if matches(s, labels) {
			out = append(out, s)
		}
	}
	return out
}

func matches(s *dto.Metric, labels []string) bool {
	for i := 0; i < len(labels); i += 2 {
		if !slices.ContainsFunc(s.Label, func(l *dto.LabelPair) bool {
			return l.GetName() == labels[i] && l.GetValue() == labels[i+1]
		}) {
			return false
		}
	}
	return true
}

// NonZero returns every series whose name starts with prefix and whose
// value (as [Metrics.Value]) is not 0, keyed "name{k=v,k=v}" with the
// labels sorted by name.
func (m Metrics) NonZero(prefix string) map[string]float64 {
	out := map[string]float64{}
	for name, f := range m.families {
		if !strings.HasPrefix(name, prefix) {
			continue
		}
		for _, s := range f.Metric {
			if v := value(s); v != 0 {
				out[name+"{"+labelString(s)+"}"] = v
			}
		}
	}
	return out
}
