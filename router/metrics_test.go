package router_test

import (
	"context"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/instrument/instrumenttest"
	"github.com/retry-kafka/retry-kafka/pubsub/memory"
	"github.com/retry-kafka/retry-kafka/router"
	"github.com/retry-kafka/retry-kafka/tiered"
)

// fixedDepth reports the same depth for every dead-letter topic.
type fixedDepth struct {
	messages int64
	oldest   time.Time
}

func (f fixedDepth) DeadLetterDepth(context.Context, string) (int64, time.Time, error) {
	return f.messages, f.oldest, nil
}

// With a Registerer the router wires the middleware's metrics, the holding
// subscribers' gauges of every tier and, with DeadLetters, the depth of
// every handler's dead-letter topic; two retriers on one registry share
// them.
func TestRetrier_registersEveryHandlersMetrics(t *testing.T) {
	backend := memory.New(nil)
	defer backend.Close()
	reg := prometheus.NewRegistry()
	policy := tiered.Policy{Delays: []time.Duration{time.Second, time.Minute}}
	config := router.Config{Backend: backend, Policy: policy, Registerer: reg, DeadLetters: fixedDepth{messages: 4, oldest: time.Now().Add(-time.Hour)}}
	ok := func(*message.Message) error { return nil }
	for _, handler := range []string{"billing", "shipping"} {
		retrying, err := router.New(config, nil) // one retrier per handler, one registry
		require.NoError(t, err)
		r, err := message.NewRouter(message.RouterConfig{}, nil)
		require.NoError(t, err)
		_, err = retrying.AddConsumerHandler(r, handler, "orders", ok)
		require.NoError(t, err)
	}

	m := instrumenttest.Gather(t, reg)
	require.Equal(t, []string{
		"handler_name=billing,tier=1", "handler_name=billing,tier=2", "handler_name=shipping,tier=1", "handler_name=shipping,tier=2",
	}, m.Series("retry_kafka_held_messages"))
	require.Equal(t, []string{
		"handler_name=billing,tier=0", "handler_name=billing,tier=1", "handler_name=billing,tier=2",
		"handler_name=shipping,tier=0", "handler_name=shipping,tier=1", "handler_name=shipping,tier=2",
	}, m.Series("retry_kafka_successes_total"))
	require.Equal(t, []string{"handler_name=billing", "handler_name=shipping"}, m.Series("retry_kafka_dlq_messages"))
	require.Equal(t, 4.0, m.Value("retry_kafka_dlq_messages", "handler_name", "billing"))
	require.InDelta(t, time.Hour.Seconds(), m.Value("retry_kafka_dlq_oldest_seconds", "handler_name", "shipping"), 60)
}

// Without a Registerer nothing is registered, in the global registry
// either.
func TestRetrier_registersNothingWithoutRegisterer(t *testing.T) {
	backend := memory.New(nil)
	defer backend.Close()
	retrying, err := router.New(router.Config{Backend: backend, Policy: tiered.Policy{Delays: []time.Duration{time.Second}}}, nil)
	require.NoError(t, err)
	r, err := message.NewRouter(message.RouterConfig{}, nil)
	require.NoError(t, err)
	_, err = retrying.AddConsumerHandler(r, "billing", "orders", func(*message.Message) error { return nil })
	require.NoError(t, err)
	for _, name := range instrumenttest.Gather(t, prometheus.DefaultGatherer).Names() {
		require.NotContains(t, name, "retry_kafka")
	}
}
