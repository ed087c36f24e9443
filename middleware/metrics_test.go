package middleware_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmetrics "github.com/ThreeDotsLabs/watermill/components/metrics"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/instrument/instrumenttest"
	"github.com/retry-kafka/retry-kafka/middleware"
	"github.com/retry-kafka/retry-kafka/tiered"
)

const (
	tier1 = "orders.billing.retry.1m"
	tier2 = "orders.billing.retry.2m"
	dlq   = "orders.billing.dlq"
)

// failOn returns a handler that fails with err on the topics given, and
// succeeds elsewhere.
func failOn(err error, topics ...string) message.NoPublishHandlerFunc {
	errs := map[string]error{}
	for _, t := range topics {
		errs[t] = err
	}
	return failWith(errs)
}

// failWith returns a handler that fails with errs[topic] on each topic.
func failWith(errs map[string]error) message.NoPublishHandlerFunc {
	return func(msg *message.Message) error {
		return errs[message.SubscribeTopicFromCtx(msg.Context())]
	}
}

// After one message, the registry holds exactly the counts of what
// happened to it, each under its handler, tier and reason class.
func TestRetry_metricsCountEachOutcome(t *testing.T) {
	twoTiers := tiered.Policy{Delays: []time.Duration{time.Minute, 2 * time.Minute}, MaxAttempts: 3}
	tests := []struct {
		name     string
		policy   tiered.Policy
		handler  message.NoPublishHandlerFunc
		failures map[string]int
		tooLarge map[string]bool
		// inject publishes this message to the tier 1 topic instead of a
		// fresh one to the handler's own topic.
		inject *message.Message
		want   map[string]float64
	}{
		{
			name:    "success on the handler's own topic",
			policy:  twoTiers,
			handler: failOn(nil),
			want:    map[string]float64{`retry_kafka_successes_total{handler_name=billing,tier=0}`: 1},
		},
		{
			name:    "fails once, succeeds from tier 1",
			policy:  twoTiers,
			handler: failOn(errBoom, "orders"),
			want: map[string]float64{
				`retry_kafka_tier_messages_total{handler_name=billing,tier=1}`: 1,
				`retry_kafka_lateness_seconds{handler_name=billing,tier=1}`:    1,
				`retry_kafka_successes_total{handler_name=billing,tier=1}`:     1,
			},
		},
		{
			name:    "exhausted after the last tier",
			policy:  twoTiers,
			handler: failOn(errBoom, "orders", tier1, tier2),
			want: map[string]float64{
				`retry_kafka_tier_messages_total{handler_name=billing,tier=1}`:          1,
				`retry_kafka_tier_messages_total{handler_name=billing,tier=2}`:          1,
				`retry_kafka_lateness_seconds{handler_name=billing,tier=1}`:             1,
				`retry_kafka_lateness_seconds{handler_name=billing,tier=2}`:             1,
				`retry_kafka_dead_letters_total{handler_name=billing,reason=exhausted}`: 1,
			},
		},
		{
			name:    "permanent error on tier 1",
			policy:  twoTiers,
			handler: failWith(map[string]error{"orders": errBoom, tier1: tiered.Permanent(errBoom)}),
			want: map[string]float64{
				`retry_kafka_tier_messages_total{handler_name=billing,tier=1}`:          1,
				`retry_kafka_lateness_seconds{handler_name=billing,tier=1}`:             1,
				`retry_kafka_dead_letters_total{handler_name=billing,reason=permanent}`: 1,
			},
		},
		{
			name: "classified as not retried",
			policy: tiered.Policy{Delays: []time.Duration{time.Minute}, Classify: func(tiered.ClassifyParams) tiered.Decision {
				return tiered.DeadLetter
			}},
			handler: failOn(errBoom, "orders"),
			want:    map[string]float64{`retry_kafka_dead_letters_total{handler_name=billing,reason=classified}`: 1},
		},
		{
			name:     "temporary publish failures of the tier copy",
			policy:   twoTiers,
			handler:  failOn(errBoom, "orders"),
			failures: map[string]int{tier1: 2},
			want: map[string]float64{
				`retry_kafka_publish_failures_total{destination=tier,handler_name=billing}`: 2,
				`retry_kafka_tier_messages_total{handler_name=billing,tier=1}`:              1,
				`retry_kafka_lateness_seconds{handler_name=billing,tier=1}`:                 1,
				`retry_kafka_successes_total{handler_name=billing,tier=1}`:                  1,
			},
		},
		{
			name:     "temporary publish failure of the dead-letter copy",
			policy:   twoTiers,
			handler:  failOn(tiered.Permanent(errBoom), "orders"),
			failures: map[string]int{dlq: 1},
			want: map[string]float64{
				`retry_kafka_publish_failures_total{destination=dlq,handler_name=billing}`: 1,
				`retry_kafka_dead_letters_total{handler_name=billing,reason=permanent}`:    1,
			},
		},
		{
			name:     "tier copy that can never be published: its stub is dead-lettered",
			policy:   twoTiers,
			handler:  failOn(errBoom, "orders"),
			tooLarge: map[string]bool{tier1: true},
			want: map[string]float64{
				`retry_kafka_publish_failures_total{destination=tier,handler_name=billing}`: 1,
				`retry_kafka_dead_letters_total{handler_name=billing,reason=unpublishable}`: 1,
			},
		},
		{
			name:    "unusable retry metadata on a tier topic",
			policy:  twoTiers,
			handler: failOn(nil),
			inject: func() *message.Message {
				msg := message.NewMessage("forged", []byte("x"))
				msg.Metadata.Set(tiered.KeyAttempt, "many")
				return msg
			}(),
			want: map[string]float64{`retry_kafka_dead_letters_total{handler_name=billing,reason=invalid_metadata}`: 1},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reg := prometheus.NewRegistry()
			rg := newRig(t, rigConfig{
				policy: tt.policy, handler: tt.handler, failures: tt.failures, tooLarge: tt.tooLarge,
				tiers: true, registerer: reg,
			})
			if tt.inject != nil {
				require.NoError(t, rg.gc.Publish(tier1, tt.inject))
			} else {
				rg.publish(t, message.NewMessage("m1", []byte("payload")))
			}
			require.Eventually(t, func() bool {
				return len(instrumenttest.Gather(t, reg).NonZero("retry_kafka_")) >= len(tt.want)
			}, waitFor, tick)
			// Whatever else the message would cause has happened by now
			// (every hop ran on the router before its count); nothing
			// more may come.
			require.Never(t, func() bool { return len(instrumenttest.Gather(t, reg).NonZero("retry_kafka_")) > len(tt.want) }, 50*time.Millisecond, tick)
			require.Equal(t, tt.want, instrumenttest.Gather(t, reg).NonZero("retry_kafka_"))
		})
	}
}

// The series of every tier and reason exist, at 0, as soon as the
// middleware is built, so that rates and dashboards work before the first
// failure.
func TestNewRetry_metricSeriesExistAtZero(t *testing.T) {
	reg := prometheus.NewRegistry()
	retry, err := middleware.NewRetry(middleware.Config{
		Publisher:  nopPublisher{},
		Policy:     tiered.Policy{Delays: []time.Duration{time.Minute, 2 * time.Minute}},
		Topic:      "orders",
		Handler:    "billing",
		Registerer: reg,
	}, nil)
	require.NoError(t, err)
	_ = retry.Middleware(func(*message.Message) ([]*message.Message, error) { return nil, nil })
	for i := range 2 {
		_, err := retry.TierMiddleware(i + 1)
		require.NoError(t, err)
	}

	m := instrumenttest.Gather(t, reg)
	require.Equal(t, []string{"handler_name=billing,tier=1", "handler_name=billing,tier=2"}, m.Series("retry_kafka_tier_messages_total"))
	require.Equal(t, []string{"handler_name=billing,tier=0", "handler_name=billing,tier=1", "handler_name=billing,tier=2"}, m.Series("retry_kafka_successes_total"))
	require.Equal(t, []string{"handler_name=billing,tier=1", "handler_name=billing,tier=2"}, m.Series("retry_kafka_lateness_seconds"))
	require.Equal(t, []string{"destination=dlq,handler_name=billing", "destination=tier,handler_name=billing"}, m.Series("retry_kafka_publish_failures_total"))
	require.Equal(t, []string{
		"handler_name=billing,reason=classified", "handler_name=billing,reason=exhausted", "handler_name=billing,reason=invalid_metadata",
		"handler_name=billing,reason=permanent", "handler_name=billing,reason=undecodable", "handler_name=billing,reason=unpublishable",
	}, m.Series("retry_kafka_dead_letters_total"))
	require.Empty(t, m.NonZero("retry_kafka_"))

	retry.Undecodable(tiered.UndecodableParams{Topic: "orders", DLQ: dlq})
	require.Equal(t, map[string]float64{`retry_kafka_dead_letters_total{handler_name=billing,reason=undecodable}`: 1},
		instrumenttest.Gather(t, reg).NonZero("retry_kafka_"))
}

// Without a Registerer nothing is registered anywhere: not in the global
// registry either.
func TestNewRetry_registersNothingWithoutRegisterer(t *testing.T) {
	rg := newRig(t, rigConfig{
		policy:  tiered.Policy{Delays: []time.Duration{time.Minute}, MaxAttempts: 2},
		handler: failOn(errBoom, "orders", tier1),
		tiers:   true,
	})
	rg.publish(t, message.NewMessage("m1", []byte("payload")))
	require.Eventually(t, func() bool { return len(rg.pub.on(dlq)) == 1 }, waitFor, tick)

	for _, name := range instrumenttest.Gather(t, prometheus.DefaultGatherer).Names() {
		require.NotContains(t, name, "retry_kafka", "registered in the global registry")
	}
}

// Two retriers on one registry share the metrics: the same handler's
// counts add up, two handlers keep their own series, and neither fails to
// register.
func TestNewRetry_twoRetriersOnOneRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	policy := tiered.Policy{Delays: []time.Duration{time.Minute}}
	newRetry := func(handler string) *middleware.Retry {
		retry, err := middleware.NewRetry(middleware.Config{
			Publisher: nopPublisher{}, Policy: policy, Topic: "orders", Handler: handler, Registerer: reg,
		}, nil)
		require.NoError(t, err)
		return retry
	}
	billingA, billingB, shipping := newRetry("billing"), newRetry("billing"), newRetry("shipping")

	fail := func(*message.Message) ([]*message.Message, error) { return nil, errBoom }
	ok := func(*message.Message) ([]*message.Message, error) { return nil, nil }
	for _, call := range []message.HandlerFunc{
		billingA.Middleware(fail), billingB.Middleware(fail), billingB.Middleware(ok), shipping.Middleware(ok),
	} {
		_, err := call(message.NewMessage(watermill.NewUUID(), []byte("x")))
		require.NoError(t, err)
	}

	require.Equal(t, map[string]float64{
		`retry_kafka_tier_messages_total{handler_name=billing,tier=1}`: 2,
		`retry_kafka_successes_total{handler_name=billing,tier=0}`:     1,
		`retry_kafka_successes_total{handler_name=shipping,tier=0}`:    1,
	}, instrumenttest.Gather(t, reg).NonZero("retry_kafka_"))
}

// Watermill's components/metrics and ours on one registry: no clash at
// registration or gathering, both sets of names present, and both label
// the handler handler_name.
func TestRetry_metricsBesideWatermillsOnOneRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	gc := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	defer gc.Close()
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: waitFor}, watermill.NopLogger{})
	require.NoError(t, err)
	wmetrics.NewPrometheusMetricsBuilder(reg, "", "").AddPrometheusRouterMetrics(r)

	retry, err := middleware.NewRetry(middleware.Config{
		Publisher: gc, Policy: tiered.Policy{Delays: []time.Duration{time.Minute}}, Topic: "orders", Handler: "billing", Registerer: reg,
	}, nil)
	require.NoError(t, err)
	var calls atomic.Int32
	r.AddConsumerHandler("billing", "orders", gc, func(*message.Message) error {
		if calls.Add(1) == 1 {
			return errBoom
		}
		return nil
	}).AddMiddleware(retry.Middleware)
	done := make(chan error, 1)
	go func() { done <- r.Run(t.Context()) }()
	<-r.Running()
	defer func() { require.NoError(t, r.Close()); require.NoError(t, <-done) }()

	require.NoError(t, gc.Publish("orders", message.NewMessage("m1", nil), message.NewMessage("m2", nil)))
	require.Eventually(t, func() bool {
		m := instrumenttest.Gather(t, reg)
		return m.Value("retry_kafka_successes_total") == 1 && m.Value("retry_kafka_tier_messages_total") == 1 &&
			m.Value("handler_execution_time_seconds", "handler_name", "billing") == 2
	}, waitFor, tick)

	m := instrumenttest.Gather(t, reg)
	for _, name := range []string{"handler_execution_time_seconds", "subscriber_messages_received_total"} {
		require.True(t, m.Has(name), "Watermill's %s gathered", name)
	}
	require.Contains(t, m.LabelNames("handler_execution_time_seconds"), "handler_name")
	require.Contains(t, m.LabelNames("retry_kafka_successes_total"), "handler_name")
	require.Equal(t, 1.0, m.Value("retry_kafka_successes_total", "handler_name", "billing", "tier", "0"))
}

// A registry that already holds one of the names, from someone else's
// collector, is a clear error, and nothing of ours is left registered.
func TestNewRetry_metricNameTakenIsAnError(t *testing.T) {
	reg := prometheus.NewRegistry()
	foreign := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "retry_kafka_successes_total", Help: "not ours"}, []string{"service"})
	require.NoError(t, reg.Register(foreign))

	_, err := middleware.NewRetry(middleware.Config{
		Publisher: nopPublisher{}, Policy: tiered.Policy{Delays: []time.Duration{time.Minute}}, Topic: "orders", Handler: "billing", Registerer: reg,
	}, nil)
	require.Error(t, err)
	require.Contains(t, err.Error(), "retry_kafka_successes_total")
	require.True(t, reg.Unregister(foreign))
	require.Empty(t, instrumenttest.Gather(t, reg).Names(), "a failed NewRetry leaves the registry as it was")
}

// nopPublisher accepts everything.
type nopPublisher struct{}

func (nopPublisher) Publish(string, ...*message.Message) error { return nil }
func (nopPublisher) Close() error                              { return nil }
