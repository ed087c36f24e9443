package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/instrument/instrumenttest"
)

// shortRun is one run of the example on its default, embedded broker, for
// a second with short tiers: its output, its registry and its error.
var shortRun = sync.OnceValues(func() (*bytes.Buffer, *prometheus.Registry) {
	var out bytes.Buffer
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := run(ctx, options{
		broker:   "kafka://embedded",
		listen:   "127.0.0.1:0",
		duration: time.Second,
		rate:     40,
		delays:   []time.Duration{50 * time.Millisecond, 100 * time.Millisecond},
		every:    300 * time.Millisecond,
		out:      &out,
		registry: reg,
	}); err != nil {
		fmt.Fprintf(&out, "\nrun: %v\n", err)
		return &out, nil
	}
	return &out, reg
})

// runShort returns the output and registry of shortRun, failing t if it
// failed.
func runShort(t *testing.T) (string, *prometheus.Registry) {
	t.Helper()
	out, reg := shortRun()
	require.NotNil(t, reg, "the example failed:\n%s", out.String())
	return out.String(), reg
}

// The example on its default, embedded broker: it prints scrapes of its
// own /metrics while orders fail and recover, then the trace of a
// dead-lettered order across every hop.
func TestRun_printsScrapesAndATrace(t *testing.T) {
	out, _ := runShort(t)
	require.Contains(t, out, "serving metrics on http://127.0.0.1:")
	require.Contains(t, out, "retry_kafka_tier_messages_total{handler_name=billing,tier=1}")
	require.Contains(t, out, "retry_kafka_dead_letters_total{handler_name=billing,reason=exhausted}")
	require.Contains(t, out, "retry_kafka_successes_total{handler_name=billing,tier=2}")
	require.Contains(t, out, "retry_kafka_dlq_messages{handler_name=billing}")
	require.Regexp(t, `Trace [0-9a-f]{32} of dead-lettered message`, out)
	require.Regexp(t, `process \S+\.billing\.retry\.100ms\s+child of: send \S+\.billing\.retry\.100ms\s+linked to: process`, out)
	require.Regexp(t, `send \S+\.billing\.dlq\s+child of: process \S+\.billing\.retry\.100ms`, out)
}

// selectorRE finds the metric of each selector in a query: every query of
// the dashboard writes its metrics with braces, name{...}.
var selectorRE = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)\{`)

// labelValuesRE finds the metric of a label_values(metric, label) variable.
var labelValuesRE = regexp.MustCompile(`label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,`)

// Every metric the Grafana dashboard queries is one the example's registry
// exports (ours and Watermill's), under exactly that name; and every
// panel the issue asks for is there.
func TestDashboard_queriesOnlyExportedMetrics(t *testing.T) {
	raw, err := os.ReadFile("grafana-dashboard.json")
	require.NoError(t, err)
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
		Templating struct {
			List []struct {
				Name  string
				Query any
			}
		}
	}
	require.NoError(t, json.Unmarshal(raw, &dash))

	_, reg := runShort(t)
	exported := instrumenttest.Gather(t, reg)

	queried := map[string]bool{}
	for _, p := range dash.Panels {
		require.NotEmpty(t, p.Targets, "panel %q has no query", p.Title)
		for _, target := range p.Targets {
			found := selectorRE.FindAllStringSubmatch(target.Expr, -1)
			require.NotEmpty(t, found, "panel %q: query %q names no metric as name{...}", p.Title, target.Expr)
			for _, m := range found {
				queried[m[1]] = true
			}
		}
	}
	for _, v := range dash.Templating.List {
		q, _ := json.Marshal(v.Query)
		for _, m := range labelValuesRE.FindAllStringSubmatch(string(q), -1) {
			queried[m[1]] = true
		}
	}
	require.NotEmpty(t, queried)
	for name := range queried {
		family := name
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suffix); ok && exported.Has(base) {
				family = base
			}
		}
		require.True(t, exported.Has(family), "the dashboard queries %s, which the registry does not export (it has %v)", name, exported.Names())
	}

	var titles []string
	for _, p := range dash.Panels {
		titles = append(titles, p.Title)
	}
	for _, metric := range []string{
		"retry_kafka_tier_messages_total", "retry_kafka_dead_letters_total", "retry_kafka_lateness_seconds_bucket",
		"retry_kafka_held_messages", "retry_kafka_dlq_messages",
	} {
		require.True(t, queried[metric], "the dashboard shows %s (panels: %v)", metric, titles)
	}
}
