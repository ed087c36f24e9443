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
	d, err := instrument.NewDeadLetters(f.read, map[string]string{"billing": "orders.billing.dlq", "shipping": "orders.shipping.dlq"},
		30*time.Second, func() time.Time { return now })
	require.NoError(t, err)
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

func TestNewDeadLetters_rejectsBadConfig(t *testing.T) {
	read := (&fakeDepths{}).read
	for name, tt := range map[string]struct {
		read   instrument.DepthFunc
		dlqs   map[string]string
		maxAge time.Duration
		want   string
	}{
		"nil reader":   {nil, map[string]string{"billing": "orders.billing.dlq"}, time.Second, "nil depth reader"},
		"no topics":    {read, nil, time.Second, "no dead-letter topic"},
		"no cache age": {read, map[string]string{"billing": "orders.billing.dlq"}, 0, "cache age"},
		"empty topic":  {read, map[string]string{"billing": ""}, time.Second, "both must be set"},
		"not UTF-8":    {read, map[string]string{"\xff": "t"}, time.Second, "not valid UTF-8"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := instrument.NewDeadLetters(tt.read, tt.dlqs, tt.maxAge, nil)
			require.ErrorContains(t, err, tt.want)
		})
	}
}
