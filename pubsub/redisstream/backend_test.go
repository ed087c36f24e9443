package redisstream_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"
	wmiddleware "github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/retry-kafka/retry-kafka/internal/redistest"
	"github.com/retry-kafka/retry-kafka/pubsub/redisstream"
	"github.com/retry-kafka/retry-kafka/tiered"
)

func TestCheckVersion(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		version string
		wantErr string // "" for none
	}{
		{"6.0.16", "need Redis 6.2 or later"},
		{"5.0.7", "need Redis 6.2 or later"},
		{"6.1.99", "need Redis 6.2 or later"},
		{"6.2.0", ""},
		{"6.2.14", ""},
		{"7.0.15", ""},
		{"7.2.4", ""},
		{"10.0.0", ""},
		{"", "need Redis 6.2 or later"},
		{"seven", "need Redis 6.2 or later"},
	} {
		t.Run(tc.version, func(t *testing.T) {
			err := redisstream.CheckVersion(tc.version)
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, redisstream.ErrUnsupportedServer)
			require.ErrorContains(t, err, tc.wantErr)
			require.ErrorContains(t, err, tc.version)
		})
	}
}

func TestConfig_Validate(t *testing.T) {
	t.Parallel()
	require.NoError(t, redisstream.Config{Client: redis.NewClient(&redis.Options{})}.Validate())
	err := redisstream.Config{MaxLen: -1, MaxIdleTime: -time.Second, CloseTimeout: -1}.Validate()
	require.ErrorContains(t, err, "Client is nil")
	require.ErrorContains(t, err, "MaxLen is -1")
	require.ErrorContains(t, err, "MaxIdleTime is -1s")
	require.ErrorContains(t, err, "CloseTimeout")

	_, err = redisstream.New(context.Background(), redisstream.Config{}, nil)
	require.ErrorContains(t, err, "invalid config: Client is nil")
}

// TestBackend_callersClientOutlivesBackend: closing a router and the
// backend leaves the caller's client working, and logs nothing at Error.
func TestBackend_callersClientOutlivesBackend(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	logger := newLogger(t)
	config := redisstream.Config{Client: client}
	b, err := redisstream.New(context.Background(), config, logger)
	require.NoError(t, err)
	topic := redistest.Name(t, "orders")

	var rec recorder
	r, _ := runRouter(t, b, tiered.Policy{Delays: []time.Duration{100 * time.Millisecond}}, "billing", topic,
		func(msg *message.Message) error { rec.record(msg); return nil }, logger)
	require.NoError(t, b.Publisher().Publish(topic, message.NewMessage("m1", nil)))
	require.Eventually(t, func() bool { return rec.count() == 1 }, waitFor, tick)

	require.NoError(t, r.Close())
	require.NoError(t, client.Ping(context.Background()).Err(), "after the router closed")
	require.NoError(t, b.Publisher().Close())
	require.NoError(t, b.Close())
	require.NoError(t, b.Close(), "Close is idempotent")
	require.NoError(t, client.Ping(context.Background()).Err(), "after the backend closed")

	require.ErrorIs(t, b.Publisher().Publish(topic, message.NewMessage("m2", nil)), redisstream.ErrClosed)
	_, err = b.Subscriber(tiered.SubscribeParams{Group: "g", Topic: topic})
	require.ErrorIs(t, err, redisstream.ErrClosed)
	require.ErrorIs(t, b.Prepare(context.Background(), tiered.Topics{Main: topic}), redisstream.ErrClosed)
	require.Empty(t, errorLogs(logger), "closing logs nothing at Error")
}

// TestOpen: the backend owns the client it made from the URL, and closes
// it; the URL carries the backend's own options.
func TestOpen(t *testing.T) {
	t.Parallel()
	addr := newClient(t).Options().Addr // deletes the test's keys at the end
	logger := newLogger(t)
	b, err := redisstream.Open(context.Background(), "redis://"+addr+"/0?max_len=10&dial_timeout=2s", logger)
	require.NoError(t, err)
	topic := redistest.Name(t, "orders")

	for i := range 300 {
		require.NoError(t, b.Publisher().Publish(topic, message.NewMessage(fmt.Sprint(i), nil)))
	}
	client := redisstream.ClientOf(b)
	n, err := client.XLen(context.Background(), topic).Result()
	require.NoError(t, err)
	require.Less(t, n, int64(300), "max_len from the URL trims")

	var rec recorder
	r, _ := runRouter(t, b, tiered.Policy{Delays: []time.Duration{time.Second}}, "billing", topic,
		func(msg *message.Message) error { rec.record(msg); return nil }, logger)
	require.Eventually(t, func() bool { return rec.count() >= 10 }, waitFor, tick)

	require.NoError(t, r.Close())
	require.NoError(t, b.Close())
	require.NoError(t, b.Close())
	require.ErrorIs(t, client.Ping(context.Background()).Err(), redis.ErrClosed, "Open's client is closed with the backend")
	// The read loops of the closed subscriptions end within their block
	// time (100ms), on a closed client: that is no error to report.
	require.Never(t, func() bool { return len(errorLogs(logger)) > 0 }, 500*time.Millisecond, tick)
}

func TestOpen_badURL(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, url string
		wantErr   []string
	}{
		{"unknown parameter", "redis://user:s3cret@127.0.0.1:1/0?bogus=1",
			[]string{`redis URL "redis://user:xxxxx@127.0.0.1:1/0?bogus=1": unknown parameter "bogus" (known: max_len, consumer_group_prefix, max_idle_time, claim_interval, db, `}},
		{"go-redis parameter we do not take", "redis://user:s3cret@127.0.0.1:1/0?idle_timeout=1s", []string{`unknown parameter "idle_timeout"`}},
		{"repeated parameter of ours", "redis://user:s3cret@127.0.0.1:1/0?max_len=1&max_len=2", []string{`parameter "max_len" is given 2 times`}},
		{"repeated parameter of go-redis", "redis://user:s3cret@127.0.0.1:1/0?dial_timeout=1s&dial_timeout=2s", []string{`parameter "dial_timeout" is given 2 times`}},
		{"bad escape", "redis://user:s3cret@127.0.0.1:1/0?max_len=%zz", []string{`invalid escape "%zz"`}},
		{"bad escape in the host", "redis://user:s3cret@%zz:1/0", []string{`redis URL "redis://user:xxxxx@%zz:1/0"`, "invalid URL escape"}},
		{"unparseable host", "redis://user:s3cret@[::1/0", []string{`redis URL "redis://user:xxxxx@[::1/0"`, "missing ']'"}},
		{"negative max_len", "redis://user:s3cret@127.0.0.1:1/0?max_len=-5", []string{`max_len="-5" is not a non-negative integer`}},
		{"bad duration", "redis://user:s3cret@127.0.0.1:1/0?max_idle_time=soon", []string{`max_idle_time="soon" is not a positive duration`}},
		{"bad go-redis value", "redis://user:s3cret@127.0.0.1:1/0?pool_size=many", []string{`redis URL "redis://user:xxxxx@127.0.0.1:1/0?pool_size=many"`, "pool_size"}},
		{"bad database", "redis://user:s3cret@127.0.0.1:1/zero", []string{"invalid database"}},
		{"another scheme", "http://user:s3cret@127.0.0.1:1/0", []string{"invalid URL scheme"}},
		{"nothing answers", "redis://user:s3cret@127.0.0.1:1/0?max_retries=-1", []string{"redis at 127.0.0.1:1", "connection refused"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := redisstream.Open(context.Background(), tc.url, nil)
			require.Error(t, err)
			for _, want := range tc.wantErr {
				require.ErrorContains(t, err, want)
			}
			require.NotContains(t, err.Error(), "s3cret", "no password in errors")
		})
	}
}

// TestOpen_clientParametersAreGoRedis: every go-redis parameter that Open
// lets through is one go-redis takes (a test that fails when go-redis
// drops one).
func TestOpen_clientParametersAreGoRedis(t *testing.T) {
	t.Parallel()
	for _, name := range redisstream.ClientURLParams() {
		t.Run(name, func(t *testing.T) {
			value := "1"
			switch {
			case strings.HasSuffix(name, "_timeout") || strings.HasSuffix(name, "_backoff") ||
				strings.HasPrefix(name, "conn_max_"):
				value = "1s"
			case name == "pool_fifo" || name == "skip_verify":
				value = "true"
			case name == "client_name":
				value = "app"
			case name == "protocol":
				value = "3"
			}
			_, err := redis.ParseURL("rediss://127.0.0.1:6379/0?" + name + "=" + value)
			require.NoError(t, err)
		})
	}
}

// TestBackend_maxLenTrimsAllButDLQ: main and tier streams are trimmed,
// dead-letter streams never: the one named to Prepare, nor a dead-letter
// copy sent anywhere.
func TestBackend_maxLenTrimsAllButDLQ(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	logger := newLogger(t)
	b := newBackend(t, client, redisstream.Config{MaxLen: 10}, logger)
	policy := tiered.Policy{Delays: []time.Duration{time.Second}}
	topics, err := policy.Topics(redistest.Name(t, "orders"), "billing", nil)
	require.NoError(t, err)
	require.NoError(t, b.Prepare(context.Background(), topics))
	require.NoError(t, b.Prepare(context.Background(), topics), "Prepare is idempotent")
	otherDLQ := redistest.Name(t, "elsewhere.dlq")

	const n = 500
	for i := range n {
		for _, topic := range []string{topics.Main, topics.Tiers[0], topics.DLQ} {
			require.NoError(t, b.Publisher().Publish(topic, message.NewMessage(fmt.Sprint(i), nil)))
		}
		poisoned := message.NewMessage(fmt.Sprint(i), nil)
		poisoned.Metadata.Set(wmiddleware.ReasonForPoisonedKey, "boom")
		require.NoError(t, b.Publisher().Publish(otherDLQ, poisoned))
	}
	for _, topic := range []string{topics.Main, topics.Tiers[0]} {
		l := xlen(t, client, topic)
		require.GreaterOrEqual(t, l, int64(10), topic)
		require.Less(t, l, int64(200), "%s is trimmed to about MaxLen", topic)
	}
	require.EqualValues(t, n, xlen(t, client, topics.DLQ), "the DLQ named to Prepare is never trimmed")
	require.EqualValues(t, n, xlen(t, client, otherDLQ), "a dead-letter copy is never trimmed")
}

func TestBackend_prepareRejectsKeyOfAnotherType(t *testing.T) {
	t.Parallel()
	client := newClient(t)
	b := newBackend(t, client, redisstream.Config{}, nil)
	topics, err := tiered.Policy{Delays: []time.Duration{time.Second}}.Topics(redistest.Name(t, "orders"), "billing", nil)
	require.NoError(t, err)
	require.NoError(t, client.Set(context.Background(), topics.Tiers[0], "x", 0).Err())
	err = b.Prepare(context.Background(), topics)
	require.ErrorContains(t, err, topics.Tiers[0]+" holds a string, not a stream")
}

func TestBackend_subscriberParams(t *testing.T) {
	t.Parallel()
	b := newBackend(t, newClient(t), redisstream.Config{}, nil)
	_, err := b.Subscriber(tiered.SubscribeParams{Topic: "t"})
	require.ErrorContains(t, err, "Group is empty")
	_, err = b.Subscriber(tiered.SubscribeParams{Group: "g", Topic: "t", Delay: -time.Second})
	require.ErrorContains(t, err, "Delay is -1s")

	sub, err := b.Subscriber(tiered.SubscribeParams{Group: "g", Topic: "t"})
	require.NoError(t, err)
	_, err = sub.Subscribe(context.Background(), "other")
	require.ErrorContains(t, err, `made for topic "t"`)
	require.NoError(t, sub.Close())
	require.NoError(t, sub.Close())
	_, err = sub.Subscribe(context.Background(), "t")
	require.Error(t, err)
	require.ErrorIs(t, err, redisstream.ErrClosed)
}
