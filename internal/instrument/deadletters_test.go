package instrument_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/instrument"
	"github.com/retry-kafka/retry-kafka/internal/instrument/instrumenttest"
)

// fakeDepths answers depth reads from a table and counts them.
type fakeDepths struct {
	mu     sync.Mutex
	depths map[string]int64
	oldest map[string]time.Time
	fail   error
	reads  int
}

func (f *fakeDepths) read(_ context.Context, topic string) (int64, time.Time, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	if f.fail != nil {
		return 0, time.Time{}, f.fail
	}
	return f.depths[topic], f.oldest[topic], nil
}

// The depth is read at scrape time, once per cache age, and the age of the
// oldest dead letter grows at every scrape; a failed read leaves the
// gauges out and is counted.
func TestDeadLetters_readsAtScrapeTimeWithACache(t *testing.T) {
	start := time.Unix(1_700_000_000, 0)
	now := start
	f := &fakeDepths{
		depths: map[string]int64{"orders.billing.dlq": 3, "orders.shipping.dlq": 0},
		oldest: map[string]time.Time{"orders.billing.dlq": start.Add(-time.Minute)},
	}
	d := instrument.NewDeadLetters(30*time.Second, func() time.Time { return now })
	require.NoError(t, d.Watch("billing", "orders.billing.dlq", f.read))
	require.NoError(t, d.Watch("shipping", "orders.shipping.dlq", f.read))
	require.NoError(t, d.Watch("shipping", "orders.shipping.dlq", f.read), "watching again changes nothing")
	reg := prometheus.NewRegistry()
	require.NoError(t, reg.Register(d))

	m := instrumenttest.Gather(t, reg)
	require.Equal(t, map[string]float64{
		"retry_kafka_dlq_messages{handler_name=billing}":       3,
		"retry_kafka_dlq_oldest_seconds{handler_name=billing}": 60,
	}, m.NonZero("retry_kafka_dlq"))
	require.Equal(t, []string{"handler_name=billing", "handler_name=shipping"}, m.Series("retry_kafka_dlq_messages"))
	require.Equal(t, 2, f.reads)

	now = start.Add(10 * time.Second)
	f.depths["orders.billing.dlq"] = 5
	require.Equal(t, map[string]float64{
		"retry_kafka_dlq_messages{handler_name=billing}":       3,
		"retry_kafka_dlq_oldest_seconds{handler_name=billing}": 70,
	}, instrumenttest.Gather(t, reg).NonZero("retry_kafka_dlq"), "cached depth, age at the scrape")
	require.Equal(t, 2, f.reads)

	now = start.Add(31 * time.Second)
	require.Equal(t, 5.0, instrumenttest.Gather(t, reg).Value("retry_kafka_dlq_messages", "handler_name", "billing"))
	require.Equal(t, 4, f.reads)

	now = start.Add(62 * time.Second)
	f.fail = errors.New("broker down")
	m = instrumenttest.Gather(t, reg)
	require.Equal(t, map[string]float64{
		"retry_kafka_dlq_read_errors_total{handler_name=billing}":  1,
		"retry_kafka_dlq_read_errors_total{handler_name=shipping}": 1,
	}, m.NonZero("retry_kafka_dlq"))
	require.False(t, m.Has("retry_kafka_dlq_messages"), "no depth when it could not be read")
}

func TestDeadLetters_watchRejectsBadInput(t *testing.T) {
	read := (&fakeDepths{}).read
	d := instrument.NewDeadLetters(time.Second, nil)
	for name, tt := range map[string]struct {
		read           instrument.DepthFunc
		handler, topic string
		want           string
	}{
		"nil reader":  {nil, "billing", "orders.billing.dlq", "nil dead-letter depth reader"},
		"empty topic": {read, "billing", "", "both must be set"},
		"not UTF-8":   {read, "\xff", "t", "not valid UTF-8"},
	} {
		t.Run(name, func(t *testing.T) {
			require.ErrorContains(t, d.Watch(tt.handler, tt.topic, tt.read), tt.want)
		})
	}
}

// Two handlers of one name on two topics: one series, their sum and the
// older of their oldest; two registrations on one registry share one
// collector.
func TestDeadLetters_oneHandlerTwoTopicsAndOneRegistry(t *testing.T) {
	start := time.Now()
	f := &fakeDepths{
		depths: map[string]int64{"orders.billing.dlq": 3, "refunds.billing.dlq": 4},
		oldest: map[string]time.Time{"orders.billing.dlq": start.Add(-time.Minute), "refunds.billing.dlq": start.Add(-time.Hour)},
	}
	reg := prometheus.NewRegistry()
	a, err := instrument.RegisterDeadLetters(reg)
	require.NoError(t, err)
	b, err := instrument.RegisterDeadLetters(reg)
	require.NoError(t, err)
	require.Same(t, a, b)
	require.NoError(t, a.Watch("billing", "orders.billing.dlq", f.read))
	require.NoError(t, b.Watch("billing", "refunds.billing.dlq", f.read))

	m := instrumenttest.Gather(t, reg)
	require.Equal(t, 7.0, m.Value("retry_kafka_dlq_messages", "handler_name", "billing"))
	require.InDelta(t, time.Hour.Seconds(), m.Value("retry_kafka_dlq_oldest_seconds", "handler_name", "billing"), 60)
}
